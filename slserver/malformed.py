"""Requests whose bytes do not parse, answered with INVALID_ARGUMENT instead of gRPC's own error.

gRPC answers a deserialiser that raises with UNKNOWN on a unary call and ends a session stream; a peer's bad
bytes are the peer's fault and must get INVALID_ARGUMENT naming the problem (on the session stream, in-stream,
so that the session goes on). So the deserialisers never raise: they return a :class:`Malformed` stand-in, and
whoever handles the request answers it (the session's read loop, or ``MalformedRequestInterceptor`` for
unary requests).
"""
from __future__ import annotations

from typing import Any, Callable


class Malformed:
    """Stands in for a request whose bytes do not parse, so the handler can answer INVALID_ARGUMENT
    (gRPC would otherwise answer a deserialisation failure with UNKNOWN or end a session stream)."""

    def __init__(self, size: int, reason: str):
        self.size = size
        self.reason = reason

    def WhichOneof(self, _name: str) -> str:
        return "malformed"

    def ByteSize(self) -> int:
        return self.size


def safe_parser(message_name: str, parse_message: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``parse_message`` that returns :class:`Malformed` instead of raising; ``message_name`` is the message's
    full protobuf name (``slperf.v1.StartRunRequest``), for the error."""
    def parse(data: bytes) -> Any:
        try:
            return parse_message(data)
        except Exception as exc:  # protobuf's DecodeError and friends: the peer's fault, never ours
            return Malformed(len(data), f"{len(data)} bytes do not parse as {message_name}: {exc}")
    return parse
