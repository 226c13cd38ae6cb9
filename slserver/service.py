"""gRPC services of the server: the client session stream and the operator's Control service.

Identity comes from the client certificate (mutual TLS). A session may speak only as the client its
certificate names, a revoked client is refused, and Control calls need the operator certificate. Those checks
are not written here: they are interceptors, plus the Hello-time checks of ``HelloAuthorizer`` (both in
``slperf.slserver.interceptors``, which says what runs where). With ``--insecure`` (local experiments only)
there is no certificate and the claimed id is trusted.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from slperf import __version__
from slperf.common.config import ConfigError
from slperf.common.config_loader import load_config_text
from slperf.common.devices import resolve_device
from slperf.common.protocol.errors import WireError
from slperf.common.protocol.messages import Welcome
from slperf.common.protocol.untrusted import shown
from slperf.common.security.ids import valid_client_id, valid_run_id
from slperf.common.transport.channel import (
    GRPC_MAX_MESSAGE_BYTES,
    Malformed,
    serialize_envelope,
    session_request_parser,
)
from slperf.common.transport.endpoint import SessionContext
from slperf.common.wire.chunking import DEFAULT_CHUNK_BYTES, ChunkEnvelope
from slperf.common.wire.serde import PROTOCOL_VERSION, hello_from_pb
from slperf.slserver.coordinator import Run, RunCoordinator, RunExists
from slperf.slserver.interceptors import HelloAuthorizer
from slperf.slserver.served_models import ModelUnavailable, ServedModels
from slperf.slserver.sessions import Session, SessionRegistry
from slperf.v1 import inference_pb2, service_pb2, service_pb2_grpc, session_pb2

log = logging.getLogger("slperf.server")

# What the session stream carries: its deserializer (``session_request_parser``) hands the handler a protobuf
# ClientMessage, a hand-parsed ChunkEnvelope or, for bytes that do not parse, Malformed; its serializer
# (``serialize_envelope``) sends ServerMessages and hand-built ChunkEnvelopes.
SessionRequest: TypeAlias = session_pb2.ClientMessage | ChunkEnvelope | Malformed
SessionResponse: TypeAlias = session_pb2.ServerMessage | ChunkEnvelope


class SplitLearningService(service_pb2_grpc.SplitLearningServicer):
    def __init__(self, registry: SessionRegistry, auth: HelloAuthorizer):
        self.registry = registry
        self.auth = auth

    async def Session(self, request_iterator: AsyncIterator[SessionRequest], context: SessionContext) -> None:
        """One client's session, from its Hello to its end. ``context`` is the gRPC call's, or the simulation's
        in-memory stream end (``slperf.common.transport.memory``): nothing here needs more than ``SessionContext``."""
        limits = self.registry.limits
        try:
            first = await asyncio.wait_for(context.read(), limits.hello_timeout)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {limits.hello_timeout:.0f} s")
        if first == grpc.aio.EOF:
            return
        if isinstance(first, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, first.reason)
        # A ChunkEnvelope's body is always "chunk"; the isinstance check is for the type checker.
        if not isinstance(first, session_pb2.ClientMessage) or first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a session must be Hello")
        hello = hello_from_pb(first.hello)
        if hello.protocol_version != PROTOCOL_VERSION:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {hello.protocol_version} is not supported; this server speaks "
                f"version {PROTOCOL_VERSION} (upgrade the client or the server)",
            )
        if not valid_client_id(hello.client_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid client id {shown(hello.client_id)}")
        await self.auth.client(context, hello.client_id)
        session = Session(hello.client_id, context.peer(), context, limits, software_version=hello.software_version)
        try:
            replaced = await self.registry.add(session)
        except WireError as err:
            await context.abort(err.code, err.message)
        if replaced is not None:
            replaced.close(
                "replaced by a new session of the same client (reconnect)", grpc.StatusCode.ABORTED
            )  # its handler returns
        log.info(
            "client %s connected from %s (%s)",
            hello.client_id,
            context.peer(),
            shown(hello.software_version) if hello.software_version else "?",
        )
        try:
            await session.send(
                Welcome(
                    PROTOCOL_VERSION,
                    session.session_id,
                    max_payload_bytes=limits.max_payload_bytes,
                    chunk_bytes=DEFAULT_CHUNK_BYTES,
                    max_envelope_bytes=GRPC_MAX_MESSAGE_BYTES,
                    max_tensor_elements=limits.tensor_limits.max_elements,
                    max_tensor_dims=limits.tensor_limits.max_dims,
                    messages_per_second=limits.messages_per_second,
                    message_burst=limits.message_burst,
                    write_timeout_seconds=limits.write_timeout,
                )
            )
            # The handler ends when the peer ends the stream *or* when the session is closed on this side
            # (replaced by a reconnect, dropped by the run), so a stalled stream cannot resume later.
            reader = asyncio.ensure_future(session.read_loop())
            closed = asyncio.ensure_future(session.closed.wait())
            try:
                await asyncio.wait({reader, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                reader.cancel()
            failure = reader.exception() if reader.done() and not reader.cancelled() else None
            if failure is not None:
                raise failure
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # a broken stream ends this session only
            session.close(f"stream failed: {exc}", grpc.StatusCode.UNAVAILABLE)
        finally:
            session.close(session.close_reason or "stream ended")
            await self.registry.remove(session)
            log.info("client %s disconnected: %s", hello.client_id, session.close_reason)
        if session.close_code is not None:
            # Closed on this side (dropped, replaced, shutting down): the client is told why, never a bare OK.
            await context.abort(session.close_code, session.close_reason)


def add_session_service(server: grpc.aio.Server, sessions: SplitLearningService) -> None:
    """Registers the session stream by hand: its deserialiser must never raise (see
    ``slperf.common.transport.channel.Malformed``), so that bad bytes get INVALID_ARGUMENT in-stream and the session
    goes on, and its serialiser must also send the hand-built chunk envelopes. (Control uses the generated
    registration; the interceptors guard it.)"""
    parse = session_request_parser()
    session_handlers = {
        "Session": grpc.stream_stream_rpc_method_handler(
            sessions.Session, request_deserializer=parse, response_serializer=serialize_envelope
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("slperf.v1.SplitLearning", session_handlers),)
    )


def _run_status(run: Run | None) -> service_pb2.RunStatus:
    if run is None:
        return service_pb2.RunStatus(state="none")
    return service_pb2.RunStatus(
        run_id=run.run_id,
        state=run.state.value,
        round=run.round,
        rounds=run.config.epochs,
        test_accuracy=run.test_accuracy,
        paradigm=run.config.paradigm,
        error=run.error,
        summary_json=json.dumps(run.summary) if run.summary else "",
    )


class ControlService(service_pb2_grpc.ControlServicer):
    """The operator's Control calls. Registered with the generated ``add_ControlServicer_to_server``; that only the
    operator may call them, and that a request which does not parse gets INVALID_ARGUMENT, is the interceptors'
    job (``slperf.slserver.interceptors``)."""

    def __init__(
        self,
        registry: SessionRegistry,
        coordinator: RunCoordinator,
        shutdown: asyncio.Event,
        *,
        models: ServedModels | None = None,
    ):
        self.registry = registry
        self.coordinator = coordinator
        self.shutdown_event = shutdown
        self.models = models or ServedModels(coordinator.runs_dir)

    def _run(self, run_id: str) -> Run | None:
        """The current run (for an empty id) or the current or a queued run by id."""
        return self.coordinator.find(run_id)

    async def StartRun(
        self,
        request: service_pb2.StartRunRequest,
        context: grpc.aio.ServicerContext[service_pb2.StartRunRequest, service_pb2.StartRunResponse],
    ) -> service_pb2.StartRunResponse:
        try:
            # Off the event loop: a big config must not stall every session's stream while it is parsed.
            config, warnings = await asyncio.to_thread(load_config_text, request.config, source="run config")
            resolve_device(config.device, where="the server")  # a device this machine lacks: refused at start
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if config.backend != "federation":  # a server is the federation backend; sim runs in `slperf federation`
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"backend: {config.backend} is run by `slperf federation --backend {config.backend}` on one machine; a "
                "server runs federations (set backend: federation, or leave it out)",
            )
        if launched := config.launcher_keys_set():  # a server starts no client daemon
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{', '.join(launched)}: applied by the launcher that starts the client daemons (`slperf federation`, "
                "`slperf bench`: shaped links, containers); a server cannot apply them to daemons that connect to it "
                "(leave the keys out)",
            )
        for warning in warnings:
            log.warning("%s", warning)
        if request.run_id and not valid_run_id(request.run_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid run id {shown(request.run_id)}")
        try:
            run = self.coordinator.start(config, request.run_id or None)
        except RunExists as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        position = self.coordinator.queue.index(run) + 1 if run in self.coordinator.queue else 0
        return service_pb2.StartRunResponse(run_id=run.run_id, queue_position=position)

    async def Status(
        self,
        request: service_pb2.StatusRequest,
        context: grpc.aio.ServicerContext[service_pb2.StatusRequest, service_pb2.StatusResponse],
    ) -> service_pb2.StatusResponse:
        loop = asyncio.get_running_loop()
        clients = [
            service_pb2.ClientStatus(
                client_id=s.client_id,
                state=s.state.value,
                peer=s.peer,
                bytes_up=s.counter.up,
                bytes_down=s.counter.down,
                connected_seconds=loop.time() - s.connected_at,
                software_version=s.software_version,
            )
            for s in sorted(self.registry.sessions.values(), key=lambda s: s.client_id)
        ]
        return service_pb2.StatusResponse(
            clients=clients,
            run=_run_status(self.coordinator.current),
            server_version=__version__,
            queue=[_run_status(run) for run in self.coordinator.queue],
        )

    async def WatchRun(
        self,
        request: service_pb2.WatchRunRequest,
        context: grpc.aio.ServicerContext[service_pb2.WatchRunRequest, service_pb2.RunEvent],
    ) -> AsyncIterator[service_pb2.RunEvent]:
        run = self._run(request.run_id)
        if run is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id!r} on this server")
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        run.watchers.append(queue)
        try:
            yield service_pb2.RunEvent(run_id=run.run_id, kind="state", status=_run_status(run))
            while not run.finished:
                kind, payload = await queue.get()
                yield service_pb2.RunEvent(
                    run_id=run.run_id, kind=kind, json=json.dumps(payload), status=_run_status(run)
                )
            while not queue.empty():  # events published together with the final state
                kind, payload = queue.get_nowait()
                yield service_pb2.RunEvent(
                    run_id=run.run_id, kind=kind, json=json.dumps(payload), status=_run_status(run)
                )
        finally:
            run.watchers.remove(queue)

    async def StopRun(
        self,
        request: service_pb2.StopRunRequest,
        context: grpc.aio.ServicerContext[service_pb2.StopRunRequest, service_pb2.StopRunResponse],
    ) -> service_pb2.StopRunResponse:
        run = self._run(request.run_id)
        if run is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id!r} on this server")
        was_running = not run.finished
        await self.coordinator.stop(run)
        return service_pb2.StopRunResponse(stopped=was_running)

    async def RemoveModel(
        self,
        request: inference_pb2.RemoveModelRequest,
        context: grpc.aio.ServicerContext[inference_pb2.RemoveModelRequest, inference_pb2.RemoveModelResponse],
    ) -> inference_pb2.RemoveModelResponse:
        try:
            removed = await asyncio.to_thread(self.models.remove, request.run_id)
        except ModelUnavailable as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        return inference_pb2.RemoveModelResponse(removed=removed)

    async def Shutdown(
        self,
        request: service_pb2.ShutdownRequest,
        context: grpc.aio.ServicerContext[service_pb2.ShutdownRequest, service_pb2.ShutdownResponse],
    ) -> service_pb2.ShutdownResponse:
        self.shutdown_event.set()
        return service_pb2.ShutdownResponse()
