"""The server's interceptors: operator-only Control, client-only sessions, malformed unary requests, and the
checks that wait for the Hello; first against fake call contexts, then through a real grpc.aio server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pki_helpers import make_pki

from slperf.common.security.credentials import (
    client_channel_credentials,
    operator_channel_credentials,
    server_credentials,
)
from slperf.common.security.identity import Identity
from slperf.pki import revoke
from slperf.slserver.interceptors import (
    ClientIdentityInterceptor,
    HelloAuthorizer,
    MalformedRequestInterceptor,
    OperatorInterceptor,
    server_interceptors,
    session_identity,
)
from slperf.v1 import service_pb2, service_pb2_grpc

PD, UA, IA = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT
CONTROL = service_pb2.DESCRIPTOR.services_by_name["Control"]


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(code, details)
        self.code, self.details = code, details


class FakeContext:
    """The two things the checks use of a grpc.aio.ServicerContext: the auth context and abort."""

    def __init__(self, pem: bytes | None = None):
        self._auth = {"x509_pem_cert": [pem]} if pem else {"transport_security_type": [b"ssl"]}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


@dataclass(frozen=True)
class CallDetails:
    method: str
    invocation_metadata: tuple = ()


async def resolve(
    interceptors: list[grpc.aio.ServerInterceptor], handler: grpc.RpcMethodHandler | None, method: str
) -> grpc.RpcMethodHandler | None:
    """The handler grpc.aio would run for ``method``: the first interceptor is the outermost."""

    async def chain(index: int, details: CallDetails) -> grpc.RpcMethodHandler | None:
        if index == len(interceptors):
            return handler
        return await interceptors[index].intercept_service(lambda d: chain(index + 1, d), details)

    return await chain(0, CallDetails(method))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def refusal(coro: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(Aborted) as info:
        run(coro)
    return info.value.code, info.value.details


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = make_pki(tmp_path_factory.mktemp("pki") / "certs", ("c1",))
    return {
        "client": (d / "clients" / "c1.pem").read_bytes(),
        "operator": (d / "operator.pem").read_bytes(),
        "server": (d / "server.pem").read_bytes(),
    }


def _status_handler(calls: list[Any]) -> grpc.RpcMethodHandler:
    async def status(request: Any, context: Any) -> service_pb2.StatusResponse:
        calls.append(request)
        return service_pb2.StatusResponse(server_version="test")

    return grpc.unary_unary_rpc_method_handler(
        status,
        request_deserializer=service_pb2.StatusRequest.FromString,
        response_serializer=service_pb2.StatusResponse.SerializeToString,
    )


# ------------------------------------------------------------------------------------------------ operator


def test_an_operator_only_method_with_a_client_certificate_is_permission_denied(pems):
    calls: list[Any] = []
    handler = run(resolve([OperatorInterceptor()], _status_handler(calls), "/slperf.v1.Control/Status"))
    code, details = refusal(handler.unary_unary(service_pb2.StatusRequest(), FakeContext(pems["client"])))
    assert code == PD
    assert details == "Control calls need the operator certificate; this connection has a client certificate (c1)"
    assert calls == []  # the method never ran


def test_an_operator_only_method_without_a_certificate_identity_is_permission_denied(pems):
    handler = run(resolve([OperatorInterceptor()], _status_handler([]), "/slperf.v1.Control/Status"))
    code, details = refusal(handler.unary_unary(service_pb2.StatusRequest(), FakeContext(None)))
    assert code == PD and details.endswith("this connection has no certificate")


def test_the_operator_certificate_reaches_the_method(pems):
    calls: list[Any] = []
    handler = run(resolve([OperatorInterceptor()], _status_handler(calls), "/slperf.v1.Control/Status"))
    reply = run(handler.unary_unary(service_pb2.StatusRequest(), FakeContext(pems["operator"])))
    assert reply.server_version == "test" and len(calls) == 1


def test_a_streaming_control_method_is_refused_before_its_first_event(pems):
    events: list[int] = []

    async def watch(request: Any, context: Any):
        for i in range(3):
            events.append(i)
            yield service_pb2.RunEvent(run_id=str(i))

    original = grpc.unary_stream_rpc_method_handler(watch)
    handler = run(resolve([OperatorInterceptor()], original, "/slperf.v1.Control/WatchRun"))

    async def drain(context: FakeContext) -> list[str]:
        return [event.run_id async for event in handler.unary_stream(service_pb2.WatchRunRequest(), context)]

    assert refusal(drain(FakeContext(pems["server"])))[0] == PD
    assert events == []
    assert run(drain(FakeContext(pems["operator"]))) == ["0", "1", "2"]


def test_other_services_are_left_alone(pems):
    original = _status_handler([])
    assert run(resolve([OperatorInterceptor()], original, "/grpc.health.v1.Health/Check")) is original
    assert run(resolve([ClientIdentityInterceptor()], original, "/slperf.v1.Control/Status")) is original
    assert run(resolve([OperatorInterceptor()], None, "/slperf.v1.Control/Nope")) is None


# ------------------------------------------------------------------------------------------------ sessions


def _session_handler(seen: list[Identity | None]) -> grpc.RpcMethodHandler:
    async def session(requests: Any, context: Any) -> None:
        seen.append(session_identity())

    return grpc.stream_stream_rpc_method_handler(session)


@pytest.mark.parametrize(
    "role, code, details",
    [
        ("operator", PD, "a operator certificate cannot open a client session"),
        ("server", PD, "a server certificate cannot open a client session"),
        (None, UA, "no client certificate identity on this connection"),
    ],
)
def test_a_session_needs_a_client_certificate(pems, role, code, details):
    seen: list[Identity | None] = []
    handler = run(resolve([ClientIdentityInterceptor()], _session_handler(seen), "/slperf.v1.SplitLearning/Session"))
    assert refusal(handler.stream_stream(iter(()), FakeContext(pems.get(role)))) == (code, details)
    assert seen == []


def test_the_session_handler_sees_the_verified_identity(pems):
    seen: list[Identity | None] = []
    handler = run(resolve([ClientIdentityInterceptor()], _session_handler(seen), "/slperf.v1.SplitLearning/Session"))
    run(handler.stream_stream(iter(()), FakeContext(pems["client"])))
    assert seen == [Identity("client", "c1")]
    assert session_identity() is None  # set for that call only


# ------------------------------------------------------------------------------------------------ at the Hello


def _hello(auth: HelloAuthorizer, claimed: str, pem: bytes | None) -> Any:
    """The Hello check inside a session call that went through ClientIdentityInterceptor (when ``pem``)."""

    async def session(requests: Any, context: Any) -> None:
        await auth.client(context, claimed)

    interceptors = [] if auth.insecure else [ClientIdentityInterceptor()]
    handler = run(
        resolve(interceptors, grpc.stream_stream_rpc_method_handler(session), "/slperf.v1.SplitLearning/Session")
    )
    return handler.stream_stream(iter(()), FakeContext(pem))


def test_hello_claiming_another_id_is_permission_denied(pems, tmp_path):
    code, details = refusal(_hello(HelloAuthorizer(tmp_path, False), "c2", pems["client"]))
    assert code == PD and details == "client id 'c2' does not match the certificate's client id 'c1'"
    run(_hello(HelloAuthorizer(tmp_path, False), "c1", pems["client"]))  # the right claim passes


def test_hello_of_a_revoked_client_is_unauthenticated(tmp_path):
    d = make_pki(tmp_path / "certs", ("c1",))
    revoke(d, "c1")
    pem = (d / "clients" / "c1.pem").read_bytes()
    assert refusal(_hello(HelloAuthorizer(d, False), "c1", pem)) == (UA, "client 'c1' has been revoked")


def test_hello_outside_the_allowed_list_is_refused_even_without_tls():
    auth = HelloAuthorizer(None, True, frozenset({"c2"}))
    code, details = refusal(_hello(auth, "c1", None))
    assert code == PD and "allowed list" in details
    run(_hello(auth, "c2", None))


def test_hello_without_the_interceptor_fails_closed(pems, tmp_path):
    async def session() -> None:
        await HelloAuthorizer(tmp_path, False).client(FakeContext(pems["client"]), "c1")

    assert refusal(session()) == (UA, "no client certificate identity on this connection")


# ------------------------------------------------------------------------------------------------ malformed


def test_a_malformed_control_request_is_invalid_argument_before_authorisation(pems):
    calls: list[Any] = []
    interceptors = [MalformedRequestInterceptor([CONTROL]), OperatorInterceptor()]
    handler = run(resolve(interceptors, _status_handler(calls), "/slperf.v1.Control/Status"))
    request = handler.request_deserializer(b"\xff\xff\xff\xff")  # never raises
    code, details = refusal(handler.unary_unary(request, FakeContext(pems["client"])))
    assert code == IA and details.startswith("4 bytes do not parse as slperf.v1.StatusRequest")
    good = handler.request_deserializer(service_pb2.StatusRequest().SerializeToString())
    assert run(handler.unary_unary(good, FakeContext(pems["operator"]))).server_version == "test"
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------------ real server


class _Control(service_pb2_grpc.ControlServicer):
    async def Status(self, request: Any, context: Any) -> service_pb2.StatusResponse:
        return service_pb2.StatusResponse(server_version="real")


async def _real_calls(certs: Path) -> dict[str, Any]:
    server = grpc.aio.server(interceptors=server_interceptors(insecure=False))
    service_pb2_grpc.add_ControlServicer_to_server(_Control(), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(certs))
    await server.start()
    out: dict[str, Any] = {}
    options = [("grpc.ssl_target_name_override", "localhost")]
    try:
        for who, creds in (
            ("operator", operator_channel_credentials(certs)),
            ("client", client_channel_credentials(certs, "c1")),
        ):
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
                try:
                    out[who] = (
                        await service_pb2_grpc.ControlStub(channel).Status(service_pb2.StatusRequest(), timeout=10)
                    ).server_version
                except grpc.aio.AioRpcError as err:
                    out[who] = (err.code(), err.details())
                if who == "operator":
                    raw = channel.unary_unary(
                        "/slperf.v1.Control/Status", request_serializer=lambda b: b, response_deserializer=lambda b: b
                    )
                    try:
                        await raw(b"\xff\xff\xff\xff", timeout=10)
                    except grpc.aio.AioRpcError as err:
                        out["garbage"] = (err.code(), err.details())
    finally:
        await server.stop(None)
    return out


def test_through_a_real_server_with_the_generated_registration(tmp_path):
    certs = make_pki(tmp_path / "certs", ("c1",))
    out = run(_real_calls(certs))
    assert out["operator"] == "real"
    assert out["client"][0] == PD and "need the operator certificate" in out["client"][1]
    assert out["garbage"][0] == IA and "parse" in out["garbage"][1]
