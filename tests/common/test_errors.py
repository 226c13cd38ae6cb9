"""The one-line error formatter and the rendering of a failed gRPC call."""

from __future__ import annotations

import grpc

from slperf.common.errors import RpcFailure, one_line


class _CallError(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.PERMISSION_DENIED

    def details(self) -> str:
        return "Control calls need the operator certificate"


def test_one_line_collapses_whitespace_and_caps_the_length():
    assert one_line("a\n  b\tc ") == "a b c"
    capped = one_line("x" * 1000, 300)
    assert len(capped) == 300 and capped.endswith("...")
    assert one_line(ValueError("bad\nvalue")) == "bad value"


def test_a_call_error_renders_as_code_and_details():
    failure = RpcFailure.of(_CallError())
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert failure.line() == "PERMISSION_DENIED: Control calls need the operator certificate"


def test_an_error_without_a_status_renders_with_the_callers_placeholder():
    failure = RpcFailure.of(grpc.RpcError("channel closed"))
    assert failure.code is None and failure.details == "channel closed"
    assert failure.line() == "RPC: channel closed" and failure.code_name("RPC_ERROR") == "RPC_ERROR"
