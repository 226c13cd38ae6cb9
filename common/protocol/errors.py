"""The one exception type of the protocol: a gRPC status code plus a precise, human-readable message.

A servicer answers with ``err.code`` and ``err.message`` (e.g. ``await context.abort(err.code, err.message)``).
"""

from __future__ import annotations

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

    def __reduce__(
        self,
    ) -> tuple[
        type[WireError], tuple[grpc.StatusCode, str]
    ]:  # picklable across processes despite the two-argument constructor
        return (type(self), (self.code, self.message))

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
