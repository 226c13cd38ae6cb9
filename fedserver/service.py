"""The fed server's gRPC services: the clients' upload/fetch sessions and the main server's round declarations.

Identities come from the mutual-TLS handshake (the project CA vouched for them): a session must be a client
certificate whose id is the one its Hello names, a declaration the main server's own certificate towards the fed
server (``urn:slperf:server:server``). A session carries one upload, a fetch answers one average, both over the same
envelope, chunking and tensor encoding as the main server's sessions (``Endpoint``), so every limit and check of the
wire applies. A fetch is its own call because the average travels down, in a ServerMessage, and the client's
envelope has no request for weights (RequestWeights is the main server's instruction to a client).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc

from slperf.common.protocol.errors import WireError
from slperf.common.protocol.messages import ErrorReport, Hello, ModelState, Welcome
from slperf.common.security.identity import Identity, Role, identity_from_auth_context
from slperf.common.security.ids import valid_client_id
from slperf.common.transport.channel import (
    GRPC_MAX_MESSAGE_BYTES,
    Malformed,
    safe_parser,
    serialize_envelope,
    session_request_parser,
)
from slperf.common.transport.endpoint import Endpoint, ServerEndpoint, Side, StreamBroken
from slperf.common.wire.chunking import DEFAULT_CHUNK_BYTES
from slperf.common.wire.codec import DEFAULT_LIMITS
from slperf.common.wire.framing import DEFAULT_MAX_PAYLOAD_BYTES
from slperf.common.wire.serde import PROTOCOL_VERSION, hello_from_pb, segment_layout_from_pb
from slperf.fedserver.aggregator import FedAggregator, Refused, rule_of
from slperf.v1 import fedserver_pb2, session_pb2

log = logging.getLogger("slperf.fedserver")

SERVICE = "slperf.v1.FedAggregation"
HELLO_TIMEOUT = 5.0
MESSAGE_TIMEOUT = 60.0  # the one upload or fetch must arrive within this of the Welcome
WRITE_TIMEOUT = 60.0
MAIN_SERVER = Identity(Role.SERVER, "server")

# Told of every settled round: (run id, round, clients averaged, participants without a valid upload).
SettleObserver = Callable[[str, int, list[str], list[str]], None]


class FedService:
    def __init__(self, aggregator: FedAggregator, *, insecure: bool = False, on_settle: SettleObserver | None = None):
        self.aggregator = aggregator
        self.insecure = insecure
        self.on_settle = on_settle
        self._lock = asyncio.Lock()  # declarations and uploads change the rounds one at a time

    def _identity(self, context: Any) -> Identity | None:
        return None if self.insecure else identity_from_auth_context(context.auth_context())

    async def _check_caller(self, context: Any, protocol_version: int, client_id: str) -> None:
        """Aborts the call unless it speaks this protocol version and its certificate is client ``client_id``'s."""
        if protocol_version != PROTOCOL_VERSION:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {protocol_version} is not supported; this speaks {PROTOCOL_VERSION}",
            )
        if not valid_client_id(client_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid client id")
        peer = self._identity(context)
        if not self.insecure and peer != Identity(Role.CLIENT, client_id):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"the certificate ({peer}) is not client {client_id}'s"
            )

    def _endpoint(self, context: Any, client_id: str) -> ServerEndpoint:
        return Endpoint(
            context,
            Side.SERVER,
            name=client_id,
            limits=DEFAULT_LIMITS,
            max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES,
            write_timeout=WRITE_TIMEOUT,
            transfer_timeout=MESSAGE_TIMEOUT,
        )

    async def Session(self, requests: Any, context: Any) -> None:  # noqa: N802 - the gRPC method name
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {HELLO_TIMEOUT:.0f} s")
        if first == grpc.aio.EOF:
            return
        if isinstance(first, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, first.reason)
        if not isinstance(first, session_pb2.ClientMessage) or first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a session must be Hello")
        hello: Hello = hello_from_pb(first.hello)
        await self._check_caller(context, hello.protocol_version, hello.client_id)
        endpoint = self._endpoint(context, hello.client_id)
        try:
            await endpoint.send(
                Welcome(
                    PROTOCOL_VERSION,
                    "fed",
                    max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES,
                    chunk_bytes=DEFAULT_CHUNK_BYTES,
                    max_envelope_bytes=GRPC_MAX_MESSAGE_BYTES,
                    max_tensor_elements=DEFAULT_LIMITS.max_elements,
                    max_tensor_dims=DEFAULT_LIMITS.max_dims,
                    messages_per_second=100.0,
                    message_burst=100,
                    write_timeout_seconds=WRITE_TIMEOUT,
                )
            )
            try:
                message = await asyncio.wait_for(endpoint.receive(), MESSAGE_TIMEOUT)
            except WireError as err:
                self.aggregator.uploads_refused += 1
                await endpoint.send(ErrorReport(err.code, err.message))
                return
            await endpoint.send(await self._answer(hello.client_id, message))
        except (StreamBroken, TimeoutError, ConnectionError) as exc:
            log.info("client %s: session ended: %s", hello.client_id, exc)

    async def _answer(self, client_id: str, message: object) -> ModelState | ErrorReport:
        if not isinstance(message, ModelState):
            return ErrorReport(grpc.StatusCode.INVALID_ARGUMENT, "expected model_state (an upload)")
        try:
            async with self._lock:
                self.aggregator.upload(message.run_id, message.round, message.segment, client_id, message.tensors)
        except Refused as err:
            log.warning("client %s: %s", client_id, err.message)
            return ErrorReport(err.code, err.message)
        log.info("client %s uploaded %s of run %s round %d", client_id, message.segment, message.run_id, message.round)
        return ModelState(message.run_id, message.round, message.segment, {})

    async def Fetch(self, request: Any, context: Any) -> None:  # noqa: N802 - the gRPC method name
        """The run's latest average (as of a settled round) in one ModelState, or an ErrorReport saying why not."""
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        await self._check_caller(context, request.protocol_version, request.client_id)
        answer: ModelState | ErrorReport
        try:
            async with self._lock:  # not halfway through a settle (which runs on a thread)
                round, average = self.aggregator.latest(request.run_id, request.round, request.client_id)
            answer = ModelState(request.run_id, round, request.segment, average)
        except Refused as err:
            answer = ErrorReport(err.code, err.message)
        try:
            await self._endpoint(context, request.client_id).send(answer)
        except (StreamBroken, ConnectionError) as exc:
            log.info("client %s: fetch ended: %s", request.client_id, exc)

    async def DeclareRound(  # noqa: N802 - the gRPC method name
        self, request: Any, context: Any
    ) -> fedserver_pb2.DeclareRoundResponse:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        if not self.insecure and self._identity(context) != MAIN_SERVER:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "only the main server (server_client.pem) declares rounds"
            )
        try:
            async with self._lock:
                if not request.settle:
                    layout = segment_layout_from_pb(request.layout).tensors
                    rule = rule_of(request.aggregation, request.trim_fraction)
                    self.aggregator.open(
                        request.run_id, request.round, request.segment, layout, rule, list(request.participants)
                    )
                    return fedserver_pb2.DeclareRoundResponse()
                samples = {cid: int(n) for cid, n in request.participants.items()}
                done = await asyncio.to_thread(self.aggregator.settle, request.run_id, request.round, samples)
        except WireError as err:
            await context.abort(err.code, err.message)
        except Refused as err:
            await context.abort(err.code, err.message)
        if self.on_settle is not None:
            self.on_settle(request.run_id, request.round, done.averaged, done.missing)
        return fedserver_pb2.DeclareRoundResponse(averaged=done.averaged, missing=done.missing)


def add_fed_services(server: grpc.aio.Server, service: FedService) -> None:
    """The session by hand (its deserialiser must never raise and its serialiser sends chunk envelopes, as on the main
    server), the declaration with a parser that never raises either."""
    declare = safe_parser(
        fedserver_pb2.DeclareRoundRequest.DESCRIPTOR.full_name, fedserver_pb2.DeclareRoundRequest.FromString
    )
    fetch = safe_parser(fedserver_pb2.FetchRequest.DESCRIPTOR.full_name, fedserver_pb2.FetchRequest.FromString)
    handlers = {
        "Session": grpc.stream_stream_rpc_method_handler(
            service.Session, request_deserializer=session_request_parser(), response_serializer=serialize_envelope
        ),
        "Fetch": grpc.unary_stream_rpc_method_handler(
            service.Fetch, request_deserializer=fetch, response_serializer=serialize_envelope
        ),
        "DeclareRound": grpc.unary_unary_rpc_method_handler(
            service.DeclareRound,
            request_deserializer=declare,
            response_serializer=fedserver_pb2.DeclareRoundResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
