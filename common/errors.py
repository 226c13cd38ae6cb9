"""One-line error text: the formatter every user-facing message goes through, and the rendering of a failed
gRPC call.

Errors here end up in the log of a daemon someone else started, or in a container health check's output, often
as the only line anyone reads; so they are one line and name what went wrong. Nothing here imports gRPC: a
failed call is read through its ``code()``/``details()`` methods, which keeps this importable by commands that
load gRPC only when they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


def one_line(text: object, limit: int = 600) -> str:
    """Collapses whitespace (newlines included) so a message stays on one line, and caps its length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True)
class RpcFailure:
    """What a failed gRPC call reports: its status code (None when the error carries none) and its details."""

    code: grpc.StatusCode | None
    details: str

    @classmethod
    def of(cls, exc: BaseException) -> RpcFailure:
        """Reads a ``grpc.RpcError`` (a call error has ``code()`` and ``details()``; a bare RpcError has neither)."""
        code_fn, details_fn = getattr(exc, "code", None), getattr(exc, "details", None)
        code = code_fn() if callable(code_fn) else None
        return cls(code, str(details_fn()) if callable(details_fn) else str(exc))

    def code_name(self, unknown: str = "RPC") -> str:
        """The status code's name (``PERMISSION_DENIED``), or ``unknown`` when the error carries none."""
        return self.code.name if self.code is not None else unknown

    def line(self, unknown: str = "RPC") -> str:
        """``CODE: details``: how the CLI reports a refused call."""
        return f"{self.code_name(unknown)}: {self.details}"
