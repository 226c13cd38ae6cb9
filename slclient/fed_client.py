"""A client daemon's line to the run's fed server (``fed_server:``): it uploads its trained bottom there after each
training pass and fetches the average before its next pass, so its weights never go to the main server.

An upload is one short session over the same envelope as the main server's (Hello, Welcome, one ModelState, one
receipt); a fetch is one ``Fetch`` call answered on that envelope (one ModelState or one Error), because the
client's envelope has no request for weights. The channel verifies the fed server's name ``slperf-fedserver`` in its
certificate whatever address the run config gives, with this daemon's own client certificate, so a client uploads
only to the fed server the project CA vouched for.

Whatever goes wrong on this line surfaces as ``FedRefused``, never as another exception: the caller runs inside the
main server's session, and an exception escaping there would end that session too (its channel's close cancels it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from slperf import __version__
from slperf.common.protocol.errors import WireError
from slperf.common.protocol.messages import ErrorReport, Hello, ModelState, ServerMessage, Welcome
from slperf.common.protocol.types import State
from slperf.common.security.layout import FEDSERVER_TLS_NAME
from slperf.common.transport.channel import create_channel, envelope_parser, serialize_envelope
from slperf.common.transport.endpoint import ClientEndpoint, Endpoint, Side
from slperf.common.wire.serde import PROTOCOL_VERSION
from slperf.v1 import fedserver_pb2, session_pb2

SESSION_METHOD = "/slperf.v1.FedAggregation/Session"
FETCH_METHOD = "/slperf.v1.FedAggregation/Fetch"


class FedRefused(Exception):
    """The fed server refused the upload or fetch (or could not be reached); ``code`` says how."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"the fed server: {code.name}: {message}")
        self.code = code


class _ReadOnly:
    """A server-streaming call as an endpoint's stream: the fetch's answer is read, nothing is written on it."""

    def __init__(self, call: Any):
        self._call = call

    async def read(self) -> Any:
        return await self._call.read()

    async def write(self, envelope: Any) -> None:
        raise RuntimeError("a fetch sends nothing after its request")


@asynccontextmanager
async def _refusals() -> AsyncIterator[None]:
    """Turns what a call on the fed server can raise into ``FedRefused`` (the peer's fault or the network's)."""
    try:
        yield
    except grpc.aio.AioRpcError as err:
        raise FedRefused(err.code(), err.details() or "") from None
    except WireError as err:
        raise FedRefused(err.code, f"a bad answer: {err.message}") from None
    except ConnectionError as exc:  # StreamBroken, TransferStalled
        raise FedRefused(grpc.StatusCode.UNAVAILABLE, str(exc)) from None


def _model_state(answer: ServerMessage | None) -> ModelState:
    if isinstance(answer, ErrorReport):
        raise FedRefused(answer.code, answer.message)
    if not isinstance(answer, ModelState):
        name = "nothing" if answer is None else type(answer).__name__
        raise FedRefused(grpc.StatusCode.UNAVAILABLE, f"expected model_state, got {name}")
    return answer


class FedClient:
    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None, client_id: str, timeout: float):
        if credentials is None:
            raise FedRefused(grpc.StatusCode.FAILED_PRECONDITION, "a fed server needs mutual TLS (not --insecure)")
        self.address = address
        self.credentials = credentials
        self.client_id = client_id
        self.timeout = timeout

    def _channel(self) -> grpc.aio.Channel:
        return create_channel(self.address, self.credentials, server_name=FEDSERVER_TLS_NAME)

    async def upload(self, run_id: str, round: int, segment: str, state: State, samples: int) -> None:
        async with self._channel() as channel, _refusals():
            call = channel.stream_stream(
                SESSION_METHOD,
                request_serializer=serialize_envelope,
                response_deserializer=envelope_parser(session_pb2.ServerMessage),
            )(timeout=self.timeout)
            endpoint: ClientEndpoint = Endpoint(call, Side.CLIENT)
            await endpoint.send(Hello(PROTOCOL_VERSION, self.client_id, f"slperf {__version__}"))
            welcome = await endpoint.receive()
            if not isinstance(welcome, Welcome):
                raise FedRefused(grpc.StatusCode.UNAVAILABLE, f"expected Welcome, got {type(welcome).__name__}")
            endpoint.follow(welcome)
            await endpoint.send(ModelState(run_id, round, segment, state, num_samples=samples))
            receipt = await endpoint.receive()
            await call.done_writing()
        _model_state(receipt)

    async def fetch(self, run_id: str, upto: int, segment: str) -> State | None:
        """The run's latest average once round ``upto`` is settled; None when no round has averaged anything yet."""
        request = fedserver_pb2.FetchRequest(
            protocol_version=PROTOCOL_VERSION, client_id=self.client_id, run_id=run_id, round=upto, segment=segment
        )
        async with self._channel() as channel, _refusals():
            call = channel.unary_stream(
                FETCH_METHOD,
                request_serializer=fedserver_pb2.FetchRequest.SerializeToString,
                response_deserializer=envelope_parser(session_pb2.ServerMessage),
            )(request, timeout=self.timeout)
            endpoint: ClientEndpoint = Endpoint(_ReadOnly(call), Side.CLIENT)
            answer = await endpoint.receive()
        try:
            return _model_state(answer).tensors
        except FedRefused as refused:
            if refused.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
