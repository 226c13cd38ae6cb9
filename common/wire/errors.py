"""The one exception type of the wire layer: a gRPC status code plus a precise, human-readable message.

Servicers can turn it into a gRPC status with ``err.abort(context)``; clients can re-raise it as is.
"""
from __future__ import annotations

from typing import NoReturn

import grpc


class WireError(Exception):
    """A malformed or unacceptable wire payload.

    ``code`` is the :class:`grpc.StatusCode` a server should answer with, ``message`` names the problem
    precisely (which tensor, which field, the offending value and what was expected). ``str(err)`` is the message.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"WireError({self.code.name}, {self.message!r})"

    def abort(self, context: grpc.ServicerContext) -> NoReturn:
        """Ends the RPC of ``context`` with this error's code and message (``context.abort`` raises)."""
        context.abort(self.code, self.message)
        raise AssertionError("grpc context.abort returned")  # pragma: no cover - abort always raises

    # Constructors for the status codes the wire layer uses.
    @classmethod
    def invalid(cls, message: str) -> WireError:
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message)

    @classmethod
    def exhausted(cls, message: str) -> WireError:
        return cls(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    @classmethod
    def precondition(cls, message: str) -> WireError:
        return cls(grpc.StatusCode.FAILED_PRECONDITION, message)

    @classmethod
    def data_loss(cls, message: str) -> WireError:
        return cls(grpc.StatusCode.DATA_LOSS, message)
