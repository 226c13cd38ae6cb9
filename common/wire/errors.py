"""The one exception type for bad wire input: it carries the gRPC status the peer should receive."""
from __future__ import annotations

import grpc


class WireError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message
