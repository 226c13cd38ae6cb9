"""The client daemon: dials out to the server, holds its bottom (head/tail) segments and its own data
shard, and stays connected between runs.

Connection policy: reconnect with exponential backoff and jitter whenever the server goes away. Identity
problems are final: a session refused as PERMISSION_DENIED / UNAUTHENTICATED (wrong id, revoked) or a
protocol-version mismatch exits non-zero with the server's reason; repeated TLS handshake rejections
(a certificate the server does not trust, a plaintext client against a TLS server) also stop the daemon
with a message that names the likely cause, instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch

from slperf import __version__
from slperf.common.config import ConfigError
from slperf.common.config_loader import config_from_json
from slperf.common.data import DatasetUnavailable
from slperf.common.devices import host_state
from slperf.common.paradigms import registry as paradigms
from slperf.common.paradigms.base import ClientParadigm
from slperf.common.protocol.errors import WireError
from slperf.common.protocol.exchange import Exchange
from slperf.common.protocol.messages import (
    ClientMessage,
    ErrorReport,
    Evaluate,
    Finish,
    Hello,
    ModelState,
    PhaseDone,
    Ready,
    RequestWeights,
    RunSetup,
    ServerMessage,
    TrainEpoch,
    Welcome,
)
from slperf.common.protocol.types import CutReply, CutTensor, Phase, StepRef
from slperf.common.shards import build_client_data
from slperf.common.transport.channel import create_channel, open_session
from slperf.common.transport.endpoint import ClientEndpoint, Endpoint, Side, Stream
from slperf.common.wire.codec import check_state
from slperf.common.wire.framing import ByteCounter
from slperf.common.wire.serde import PROTOCOL_VERSION

log = logging.getLogger("slperf.client")

FATAL_CODES = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
}


class ClientFatal(Exception):
    """The daemon cannot go on (refused identity, bad credentials); the message says why and what to fix."""


class ServerError(Exception):
    """The server answered a pass with an in-stream error (or with something the pass cannot use)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class ClientOptions:
    server: str
    client_id: str
    credentials: grpc.ChannelCredentials | None  # None = plaintext (--insecure)
    server_name: str | None = None  # TLS name override when the address is not in the certificate
    cache_dir: Path | None = None
    data_dir: str | None = None
    max_handshake_failures: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    once: bool = False  # exit after the first run finishes (tests)
    torch_threads: int = 0
    device: str | None = None  # this silo's torch device (--device); None: the run's client_device


class SessionLink:
    """The client's side of one session stream: its endpoint, and the paradigm's ClientLink over it."""

    def __init__(self, call: Stream, run_id: str = "", exchange: Exchange | None = None):
        self.call = call
        self.run_id = run_id
        self.endpoint: ClientEndpoint = Endpoint(call, Side.CLIENT)
        # The run's declared exchange, which every reply is checked against; the batch size of each cut tensor
        # sent that awaits a reply, by its ref.
        self.exchange = exchange
        self._awaiting: dict[StepRef, int] = {}

    @property
    def counter(self) -> ByteCounter:
        return self.endpoint.counter

    def begin_pass(self, run_id: str, exchange: Exchange | None) -> None:
        """A new pass of run ``run_id``: replies are checked against ``exchange``; nothing from an aborted pass
        is still awaited."""
        self.run_id = run_id
        self.exchange = exchange
        self._awaiting.clear()

    async def send(self, message: ClientMessage) -> None:
        await self.endpoint.send(message)

    async def receive(self) -> ServerMessage | None:
        """The next message from the server; None when it ends the stream. Bad messages are logged and dropped."""
        while True:
            try:
                return await self.endpoint.receive()
            except WireError as err:
                log.error("dropping a bad message from the server: %s", err.message)

    # -- ClientLink ---------------------------------------------------------------------------------
    async def send_cut_tensor(
        self,
        ref: StepRef,
        tensor: torch.Tensor,
        labels: torch.Tensor | None = None,
        sample_ids: torch.Tensor | None = None,
    ) -> None:
        if self.exchange is not None and self.exchange.stage(ref.phase, ref.stage).down is not None:
            self._awaiting[ref] = int(tensor.shape[0])
        await self.send(CutTensor(ref, tensor, labels, sample_ids))

    async def recv_reply(self, ref: StepRef) -> CutReply:
        if self.exchange is None or ref not in self._awaiting:
            raise ServerError(grpc.StatusCode.FAILED_PRECONDITION, f"no cut tensor awaiting a reply was sent for {ref}")
        while True:
            message = await self.receive()
            if message is None:
                raise ConnectionError("the server closed the session")
            if isinstance(message, ErrorReport):
                raise ServerError(message.code, message.message)
            if not isinstance(message, CutReply):
                raise ServerError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"expected cut_reply, got {type(message).__name__}"
                )
            if message.ref != ref:
                log.warning("dropping a reply for step %s while waiting for %s", message.ref, ref)
                continue
            batch = self._awaiting.pop(ref)
            try:
                self.exchange.check_down(message, self.exchange.stage(ref.phase, ref.stage), batch)
            except WireError as err:
                raise ServerError(
                    err.code,
                    f"the server's reply to step {ref.step} {ref.stage or ''} does not "
                    f"match the paradigm's exchange: {err.message}",
                ) from None
            return message


class ClientDaemon:
    def __init__(self, opts: ClientOptions):
        self.opts = opts
        self.paradigm: ClientParadigm | None = None
        self.exchange: Exchange | None = None  # the current run's, from the paradigm's spec
        self.run_id = ""
        self._setup_key: tuple[str, str, int, int] | None = None  # what the current paradigm was built for
        self.runs_finished = 0

    async def run_forever(self) -> None:
        delay = self.opts.backoff_initial
        handshake_failures = 0
        connected_once = False
        while True:
            try:
                finished = await self._session()
                connected_once = True
                handshake_failures = 0
                delay = self.opts.backoff_initial
                if finished and self.opts.once:
                    return
                log.warning("server closed the session; reconnecting")
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
                if code in FATAL_CODES:
                    raise ClientFatal(
                        f"the server refused client '{self.opts.client_id}': {code.name}: {details}"
                    ) from None
                if code == grpc.StatusCode.UNAVAILABLE and _looks_like_handshake_rejection(details):
                    handshake_failures += 1
                    if handshake_failures >= self.opts.max_handshake_failures:
                        raise ClientFatal(
                            f"the server at {self.opts.server} closed the connection during the TLS handshake "
                            f"{handshake_failures} times: it does not accept this client's credentials (a certificate "
                            f"from another CA, an expired certificate, or a plaintext client against a TLS server). "
                            f"Check --ca/--cert/--key. Last error: {details}"
                        ) from None
                log.warning("cannot reach the server (%s: %s); retrying in %.1f s", code.name, details, delay)
            except ConnectionError as exc:
                log.warning("session lost (%s); reconnecting in %.1f s", exc, delay)
            if connected_once:
                handshake_failures = 0
            await asyncio.sleep(delay * (0.5 + random.random()))  # backoff with jitter, not synchronisation
            delay = min(delay * 2, self.opts.backoff_max)

    async def _session(self) -> bool:
        """One session. Returns True when a run finished in it (for ``once``), False when the server hung up."""
        opts = self.opts
        channel = create_channel(opts.server, opts.credentials, server_name=opts.server_name)
        async with channel:
            call = open_session(channel)
            link = SessionLink(call)
            await link.send(
                Hello(
                    PROTOCOL_VERSION,
                    opts.client_id,
                    __version__,
                    ("chunks", "attachments", "paradigms:" + ",".join(s.name for s in paradigms.all_specs())),
                )
            )
            welcome = await link.receive()
            if welcome is None:
                await _status(call)  # surfaces the server's status (refusals end up here)
                raise ConnectionError("the server closed the session before Welcome")
            if not isinstance(welcome, Welcome):
                raise ConnectionError(f"expected Welcome, got {type(welcome).__name__}")
            log.info("connected to %s as %s", opts.server, opts.client_id)
            finished = False
            while True:
                message = await link.receive()
                if message is None:
                    await _status(call)
                    return finished
                done = await self._handle(link, message)
                if done:
                    finished = True
                    self.runs_finished += 1
                    if opts.once:
                        await call.done_writing()
                        return True

    async def _handle(self, link: SessionLink, message: ServerMessage) -> bool:
        """Acts on one message from the server; True when it finished a run."""
        if isinstance(message, RunSetup):
            await self._setup(link, message)
        elif isinstance(message, (TrainEpoch, Evaluate)):
            await self._phase(link, message)
        elif isinstance(message, RequestWeights):
            await self._send_weights(link, message)
        elif isinstance(message, Finish):
            log.info("run %s finished: %s", message.run_id, message.reason)
            self.paradigm = None
            self.run_id = ""
            self._setup_key = None
            self.exchange = None
            return True
        elif isinstance(message, ModelState):
            await self._set_weights(link, message)
        elif isinstance(message, ErrorReport):
            log.error("server error %s: %s", message.code.name, message.message)
        else:
            log.warning("unexpected %s from the server; ignored", type(message).__name__)
        return False

    async def _phase(self, link: SessionLink, part: TrainEpoch | Evaluate) -> None:
        kind = "train" if isinstance(part, TrainEpoch) else "evaluate"
        if self.paradigm is None or part.run_id != self.run_id:
            await self._report(
                link, grpc.StatusCode.FAILED_PRECONDITION, f"{kind} for run {part.run_id!r} before setup"
            )
            return
        link.begin_pass(self.run_id, self.exchange)
        try:
            if isinstance(part, TrainEpoch):
                summary = await self.paradigm.train_epoch(link, part.round, part.options)
            else:
                summary = await self.paradigm.evaluate(link, part.round)
        except ServerError as exc:
            if exc.code == grpc.StatusCode.ABORTED:
                log.warning("the server ended %s of round %d early: %s", kind, part.round, exc)
                return
            await self._report(link, grpc.StatusCode.ABORTED, f"{kind} of round {part.round} aborted: {exc}")
            return
        except (WireError, ValueError) as exc:
            # The server drops this client from the phase when it reports an error; the session goes on.
            await self._report(link, grpc.StatusCode.ABORTED, f"{kind} of round {part.round} aborted: {exc}")
            return
        phase = Phase.TRAIN if isinstance(part, TrainEpoch) else Phase.EVAL
        await link.send(PhaseDone(StepRef(self.run_id, part.round, summary.steps, phase), summary))

    async def _send_weights(self, link: SessionLink, request: RequestWeights) -> None:
        segment = self.paradigm.segments.get(request.segment) if self.paradigm else None
        if self.paradigm is None or segment is None:
            await self._report(link, grpc.StatusCode.NOT_FOUND, f"no segment {request.segment!r} here")
            return
        await link.send(
            ModelState(
                request.run_id,
                request.round,
                request.segment,
                host_state(segment),
                num_samples=self.paradigm.data.train.num_samples,
            )
        )

    async def _setup(self, link: SessionLink, setup: RunSetup) -> None:
        """Builds the paradigm's client side for the run; a reconnect to the same run keeps the one it has, with
        its optimiser state (momentum) and loaded shard, as an uninterrupted client would have them (the
        server sends the weights again before the next phase)."""
        key = (setup.run_id, setup.config_json, setup.client_index, setup.num_clients)
        if self.paradigm is not None and key == self._setup_key:
            log.info("run %s: rejoining with the training state this daemon already holds", setup.run_id)
            await self._ready(link, setup.run_id)
            return
        try:
            config = config_from_json(setup.config_json)
            config = dataclasses.replace(config, device=self.opts.device or config.client_device)
            spec = paradigms.get(config.paradigm)
            if config.torch_threads:
                torch.set_num_threads(config.torch_threads)
            builder = spec.client_data or build_client_data
            data = await asyncio.to_thread(builder, config, setup.client_index, self.opts.cache_dir)
            self.paradigm = await asyncio.to_thread(spec.client, config, setup.client_index, setup.num_clients, data)
            self.exchange = spec.exchange(config, setup.client_index)
        except (ConfigError, DatasetUnavailable, ValueError) as exc:
            await self._report(link, grpc.StatusCode.FAILED_PRECONDITION, f"cannot set up run {setup.run_id}: {exc}")
            return
        self.run_id = setup.run_id
        self._setup_key = key
        log.info(
            "run %s: %s, client %d of %d, %d training samples",
            setup.run_id,
            config.paradigm,
            setup.client_index + 1,
            setup.num_clients,
            data.train.num_samples,
        )
        await self._ready(link, setup.run_id)

    async def _ready(self, link: SessionLink, run_id: str) -> None:
        assert self.paradigm is not None
        data = self.paradigm.data
        await link.send(Ready(run_id, data.train.num_samples, data.test.num_samples))

    async def _set_weights(self, link: SessionLink, state: ModelState) -> None:
        segment = self.paradigm.segments.get(state.segment) if self.paradigm else None
        if segment is None or state.run_id != self.run_id:
            await self._report(
                link, grpc.StatusCode.FAILED_PRECONDITION, f"weights for unknown segment {state.segment!r}"
            )
            return
        try:
            check_state(state.tensors, segment.state_dict())
        except WireError as err:
            await self._report(link, err.code, f"weights for {state.segment!r} rejected: {err.message}")
            return
        segment.load_state_dict(state.tensors, strict=True)

    async def _report(self, link: SessionLink, code: grpc.StatusCode, message: str) -> None:
        log.error("%s", message)
        await link.send(ErrorReport(code, message))


async def _status(call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
    """Waits for the call to end; raises its AioRpcError when the server ended it with an error status (awaiting
    a grpc.aio call does that, though the type stubs do not declare calls awaitable)."""
    await call  # type: ignore[misc]


def _looks_like_handshake_rejection(details: str) -> bool:
    lowered = details.lower()
    if "connection refused" in lowered or "connect failed" in lowered and "refused" in lowered:
        return False
    return any(s in lowered for s in ("handshake", "socket closed", "ssl", "tls", "certificate", "connection reset"))
