"""A client daemon's line to the run's fed server (``fed_server:``): it uploads its trained bottom there after each
training pass and fetches the average before its next pass, so its weights never go to the main server.

Each upload or fetch is one short session over the same envelope as the main server's (Hello, Welcome, one
message, one answer). The channel verifies the fed server's name ``slperf-fedserver`` in its certificate whatever
address the run config gives, with this daemon's own client certificate, so a client uploads only to the fed
server the project CA vouched for.
"""

from __future__ import annotations

import grpc

from slperf import __version__
from slperf.common.protocol.messages import ErrorReport, Hello, ModelState, RequestWeights, Welcome
from slperf.common.protocol.types import State
from slperf.common.security.layout import FEDSERVER_TLS_NAME
from slperf.common.transport.channel import create_channel, envelope_parser, serialize_envelope
from slperf.common.transport.endpoint import ClientEndpoint, Endpoint, Side
from slperf.common.wire.serde import PROTOCOL_VERSION
from slperf.v1 import session_pb2

SESSION_METHOD = "/slperf.v1.FedAggregation/Session"


class FedRefused(Exception):
    """The fed server refused the upload or fetch (or could not be reached); ``code`` says how."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"the fed server: {code.name}: {message}")
        self.code = code


class FedClient:
    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None, client_id: str, timeout: float):
        if credentials is None:
            raise FedRefused(grpc.StatusCode.FAILED_PRECONDITION, "a fed server needs mutual TLS (not --insecure)")
        self.address = address
        self.credentials = credentials
        self.client_id = client_id
        self.timeout = timeout

    async def _ask(self, message: ModelState | RequestWeights) -> ModelState:
        channel = create_channel(self.address, self.credentials, server_name=FEDSERVER_TLS_NAME)
        async with channel:
            call = channel.stream_stream(
                SESSION_METHOD,
                request_serializer=serialize_envelope,
                response_deserializer=envelope_parser(session_pb2.ServerMessage),
            )(timeout=self.timeout)
            endpoint: ClientEndpoint = Endpoint(call, Side.CLIENT)
            try:
                await endpoint.send(Hello(PROTOCOL_VERSION, self.client_id, f"slperf {__version__}"))
                welcome = await endpoint.receive()
                if not isinstance(welcome, Welcome):
                    raise FedRefused(grpc.StatusCode.UNAVAILABLE, f"expected Welcome, got {type(welcome).__name__}")
                await endpoint.send(message)
                answer = await endpoint.receive()
                await call.done_writing()
            except grpc.aio.AioRpcError as err:
                raise FedRefused(err.code(), err.details() or "") from None
            except ConnectionError as exc:
                raise FedRefused(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        if isinstance(answer, ErrorReport):
            raise FedRefused(answer.code, answer.message)
        if not isinstance(answer, ModelState):
            raise FedRefused(grpc.StatusCode.UNAVAILABLE, f"expected model_state, got {type(answer).__name__}")
        return answer

    async def upload(self, run_id: str, round: int, segment: str, state: State, samples: int) -> None:
        await self._ask(ModelState(run_id, round, segment, state, num_samples=samples))

    async def fetch(self, run_id: str, upto: int, segment: str) -> State | None:
        """The run's latest average once round ``upto`` is settled; None when no round has averaged anything yet."""
        try:
            answer = await self._ask(RequestWeights(run_id, upto, segment))
        except FedRefused as refused:
            if refused.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return answer.tensors
