"""Text a peer sent, made safe to log or to put in a status: bounded in length and with every control character
escaped, so that a client cannot fill the server's log, forge log lines with embedded newlines, or turn an
INVALID_ARGUMENT into gRPC's ``metadata size exceeds hard limit`` by echoing a megabyte back in a status.

Every client-supplied string (ids, Error texts, versions) goes through :func:`shown` before it reaches a log line or
a status detail; use it at the point of logging, not earlier, so that the checks themselves see the real value.
"""

from __future__ import annotations

# Long enough for any legitimate id, version or error summary; a status carries a few of these at most.
MAX_SHOWN_CHARS = 200


def shown(text: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` as a quoted, escaped, bounded literal: ``'c1'``, ``'line\\nforged'``, ``'aaaa…' (+1048376 chars)``.

    Escaping is Python's ``repr`` of the (truncated) string, which renders every non-printable character as an
    escape, so the result is always one printable line of at most about ``limit`` + 30 characters.
    """
    if not isinstance(text, str):
        text = text.decode("utf-8", "replace") if isinstance(text, (bytes, bytearray)) else str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… (+{len(text) - limit} chars)"
