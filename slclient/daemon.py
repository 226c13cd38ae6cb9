"""The client daemon: dials out to the server, holds its bottom (head/tail) segments and its own data
shard, and stays connected between runs.

Connection policy (``slperf.slclient.reconnect``): the daemon never gives up because the server went away.
It reconnects with exponential backoff and jitter, forever, whether the server was killed, stopped gracefully,
restarted or is unreachable; every session that reached Welcome resets the backoff. Only refusals of who the
client is are final: PERMISSION_DENIED / UNAUTHENTICATED (another id's certificate, revoked, not allowed), a
protocol-version mismatch or an invalid id, and a certificate refused in the TLS handshake several attempts
in a row (another CA, expired, a plaintext client against a TLS server, a server certificate this client's
``--ca`` did not sign). Those raise ``ClientFatal`` with the reason.

Exit codes of ``slperf client``: 0 stopped by SIGTERM/SIGINT, or ``--once`` and a run finished; 2 an identity
or credential refusal, or a usage error (retrying cannot fix it; the systemd unit does not restart it);
1 anything unexpected (a bug: supervisors restart it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from slperf import __version__
from slperf.common.config import ConfigError, RunConfig, fed_server_address
from slperf.common.config_loader import config_from_json
from slperf.common.data import DATASETS, DatasetUnavailable
from slperf.common.devices import host_state
from slperf.common.metrics_http import METRICS_READY_PREFIX
from slperf.common.paradigms import registry as paradigms
from slperf.common.paradigms.base import ClientParadigm, InferenceUnsupported
from slperf.common.paradigms.kit.cuts import state_layout
from slperf.common.paradigms.kit.inference import segment_blocks
from slperf.common.protocol.compression import NO_CODEC
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
from slperf.common.protocol.types import CutReply, CutTensor, Phase, PhaseSummary, RunState, State, StepRef
from slperf.common.protocol.untrusted import shown
from slperf.common.shards import build_client_data
from slperf.common.transport.channel import create_channel, open_session
from slperf.common.transport.endpoint import ClientEndpoint, Endpoint, SessionCall, Side, Stream, StreamBroken
from slperf.common.wire.codec import check_state
from slperf.common.wire.compressed import ErrorFeedback
from slperf.common.wire.framing import ByteCounter
from slperf.common.wire.serde import PROTOCOL_VERSION
from slperf.slclient.fed_client import FedClient, FedRefused
from slperf.slclient.metrics import ClientMetrics, StepClock
from slperf.slclient.reconnect import Backoff, Verdict, classify
from slperf.slclient.state_store import SetupKey, Snapshot, StateStore

log = logging.getLogger("slperf.client")


class ClientFatal(Exception):
    """The daemon cannot go on (refused identity, bad credentials); the message says why and what to fix."""


class ServerError(Exception):
    """The server answered a pass with an in-stream error (or with something the pass cannot use)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class SessionEnded(Exception):
    """The server ended the session stream with a non-OK status."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class _Attempt:
    """One connection attempt: whether it got as far as the server's Welcome."""

    welcomed: bool = False


@dataclass
class ClientOptions:
    server: str
    client_id: str
    credentials: grpc.ChannelCredentials | None  # None = plaintext (--insecure)
    server_name: str | None = None  # TLS name override when the address is not in the certificate
    cache_dir: Path | None = None
    state_dir: Path | None = None  # training state kept for a restart to resume exactly; None keeps none
    data_dir: Path | None = None  # --data-dir: this silo's own data folder, which wins over the run config's
    max_handshake_failures: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    once: bool = False  # exit after the first run finishes (tests)
    torch_threads: int = 0
    device: str | None = None  # this silo's torch device (--device); None: the run's client_device
    # HOST:PORT of the Prometheus endpoint (``slperf.slclient.metrics``); None: the figures are kept, not served.
    metrics_address: str | None = None


def pin_data_dir(config: RunConfig, pinned: Path | None) -> RunConfig:
    """The run config with this silo's own data folder (--data-dir) in place of the one the server named.

    A silo that pins its folder reads its data there and nowhere else, whatever the run config's ``data_dir``
    says, so a server cannot point it at other folders; the override is logged once per run set-up. A generated
    data set reads no files, so for it the folder is dropped, not applied. Without a pin the run config's
    ``data_dir`` is used as it is.
    """
    if pinned is None:
        return config
    spec = DATASETS.get(config.dataset)
    own = None if spec is not None and spec.synthetic else str(pinned)
    if config.data_dir is not None and config.data_dir != own:
        log.info(
            "data set %s: reading this silo's --data-dir %s, not the run config's data_dir %s",
            config.dataset,
            own if own is not None else "(none: it is generated)",
            shown(config.data_dir),
        )
    return dataclasses.replace(config, data_dir=own)


class SessionLink:
    """The client's side of one session stream: its endpoint, and the paradigm's ClientLink over it."""

    def __init__(
        self, call: Stream, run_id: str = "", exchange: Exchange | None = None, metrics: ClientMetrics | None = None
    ):
        self.call = call
        self.run_id = run_id
        self.endpoint: ClientEndpoint = Endpoint(call, Side.CLIENT)
        # The run's declared exchange, which every reply is checked against; the batch size of each cut tensor
        # sent that awaits a reply, by its ref.
        self.exchange = exchange
        self._awaiting: dict[StepRef, int] = {}
        # Told of error reports and dropped messages; the current pass's clock, told of every wait on the link.
        self.metrics = metrics
        self.clock: StepClock | None = None
        self._feedback = ErrorFeedback()  # top-k error feedback of the cut tensors this client sends (topk:F:ef)

    @property
    def counter(self) -> ByteCounter:
        return self.endpoint.counter

    def begin_pass(self, run_id: str, exchange: Exchange | None, clock: StepClock | None = None) -> None:
        """A new pass of run ``run_id``: replies are checked against ``exchange``; nothing from an aborted pass
        is still awaited; ``clock`` is told of the pass's waits on the link."""
        self.run_id = run_id
        self.exchange = exchange
        self.clock = clock
        self._awaiting.clear()
        self._feedback.clear()

    async def send(self, message: ClientMessage) -> None:
        if isinstance(message, ErrorReport) and self.metrics is not None:
            self.metrics.error(message.code, "sent")
        await self.endpoint.send(message)

    async def receive(self) -> ServerMessage | None:
        """The next message from the server; None when it ends the stream. Bad messages are logged and dropped."""
        while True:
            try:
                message = await self.endpoint.receive()
            except WireError as err:
                log.error("dropping a bad message from the server: %s", err.message)
                if self.metrics is not None:
                    self.metrics.error(err.code, "dropped")
                continue
            if isinstance(message, ErrorReport) and self.metrics is not None:
                self.metrics.error(message.code, "received")
            return message

    # -- ClientLink ---------------------------------------------------------------------------------
    async def send_cut_tensor(
        self,
        ref: StepRef,
        tensor: torch.Tensor,
        labels: torch.Tensor | None = None,
        sample_ids: torch.Tensor | None = None,
    ) -> None:
        codec = NO_CODEC
        if self.exchange is not None:
            stage = self.exchange.stage(ref.phase, ref.stage)
            codec = stage.up.codec
            if stage.down is not None:
                self._awaiting[ref] = int(tensor.shape[0])
            if ref.phase is Phase.TRAIN:
                tensor = self._feedback.apply(ref.stage, tensor, codec)
        if self.clock is not None:
            self.clock.link_call(ref.step)
        try:
            await self.send(CutTensor(ref, tensor, labels, sample_ids, codec=codec))
        finally:
            if self.clock is not None:
                self.clock.link_done()

    async def recv_reply(self, ref: StepRef) -> CutReply:
        if self.exchange is None or ref not in self._awaiting:
            raise ServerError(grpc.StatusCode.FAILED_PRECONDITION, f"no cut tensor awaiting a reply was sent for {ref}")
        if self.clock is not None:
            self.clock.link_call(ref.step)
        try:
            return await self._await_reply(ref)
        finally:
            if self.clock is not None:
                self.clock.link_done()

    async def _await_reply(self, ref: StepRef) -> CutReply:
        assert self.exchange is not None
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
    def __init__(self, opts: ClientOptions, *, announce: Callable[[str], object] = print):
        self.opts = opts
        self.metrics = ClientMetrics(opts.client_id)
        self._announce = announce  # where the metrics endpoint's ready line goes (stdout)
        self.paradigm: ClientParadigm | None = None
        self.exchange: Exchange | None = None  # the current run's, from the paradigm's spec
        self.run_id = ""
        self._setup_key: SetupKey | None = None  # what the current paradigm was built for
        self.runs_finished = 0
        self.store = StateStore(opts.state_dir, opts.client_id) if opts.state_dir is not None else None
        # Training passes the held state has completed, i.e. the round it enters (None: unknown, after a failed
        # pass); and the weights the server pushed since the last pass, which a loaded state must not undo.
        self._entering: int | None = None
        self._pushed: dict[str, State] = {}
        self.fed: FedClient | None = None  # the run's fed server (``fed_server:``); None: the server averages

    async def run_forever(self) -> None:
        """Serves the server until stopped (or, with ``once``, until a run finished). Gives up only when the
        server refuses this client's identity or credentials (``ClientFatal``); a server that is down, restarts
        or stops gracefully is reconnected to with backoff, however often and however long. With
        ``metrics_address`` its metrics are served meanwhile (``SLPERF_METRICS port=N`` once they are)."""
        if self.opts.metrics_address is None:
            await self._sessions()
            return
        endpoint = self.metrics.serve(self.opts.metrics_address)  # MetricsAddressError before any dialling
        log.info("metrics on http://%s:%d/metrics", self.opts.metrics_address.rpartition(":")[0], endpoint.port)
        self._announce(f"{METRICS_READY_PREFIX}{endpoint.port}")
        try:
            await self._sessions()
        finally:
            endpoint.close()

    async def _sessions(self) -> None:
        backoff = Backoff(self.opts.backoff_initial, self.opts.backoff_max)
        refusals = 0  # attempts in a row refused at the TLS level, none of which reached Welcome
        while True:
            attempt = _Attempt()
            self.metrics.dialling()
            try:
                finished = await self._session(attempt)
                if finished and self.opts.once:
                    return
                log.warning("server closed the session; reconnecting")
                failure: tuple[grpc.StatusCode, str] | None = None
            except grpc.aio.AioRpcError as err:
                failure = (err.code(), err.details() or "")
            except SessionEnded as ended:
                failure = (ended.code, ended.details)
            except ConnectionError as exc:
                log.warning("session lost (%s); reconnecting", exc)
                failure = None
            if attempt.welcomed:
                refusals = 0
                backoff.reset()
            if failure is not None:
                code, details = failure
                self.metrics.error(code, "session")
                verdict = classify(code, details, attempt.welcomed)
                if verdict == Verdict.IDENTITY_REFUSED:
                    raise ClientFatal(f"the server refused client '{self.opts.client_id}': {code.name}: {details}")
                if verdict == Verdict.CREDENTIALS_REFUSED:
                    refusals += 1
                    if refusals >= self.opts.max_handshake_failures:
                        raise ClientFatal(
                            f"the TLS handshake with {self.opts.server} was refused {refusals} times in a row: the "
                            f"server does not accept this client's certificate (another CA, expired, or a plaintext "
                            f"client against a TLS server), or this client does not accept the server's (--ca, "
                            f"--server-name). Check --ca/--cert/--key. Last error: {details}"
                        )
                else:
                    refusals = 0
                log.warning(
                    "%s (%s: %s)",
                    "session ended" if attempt.welcomed else "cannot reach the server",
                    code.name,
                    details,
                )
            delay = backoff.next_delay()
            self.metrics.reconnecting()
            log.info("reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)  # reconnect backoff, not synchronisation

    async def _session(self, attempt: _Attempt) -> bool:
        """One session. Returns True when a run finished in it (for ``once``), False when the server ended it
        with status OK (a graceful stop); raises for any other end. Sets ``attempt.welcomed`` once Welcome came."""
        opts = self.opts
        channel = create_channel(opts.server, opts.credentials, server_name=opts.server_name)
        async with channel:
            call = open_session(channel)
            try:
                return await self._converse(attempt, call)
            except StreamBroken:
                # A write failed because the call ended: its status says why (a TLS refusal looks like this).
                await _raise_for_status(call)
                raise
            finally:
                self.metrics.session_closed()

    async def converse(self, call: SessionCall) -> bool:
        """One session over ``call``, a stream this daemon did not dial (the simulation's in-memory link): the same
        conversation as over gRPC, without the reconnect policy. Returns True when a run finished in it, False
        when the server ended it with status OK; raises ``SessionEnded`` for any other status."""
        try:
            return await self._converse(_Attempt(), call)
        except StreamBroken:
            await _raise_for_status(call)
            raise

    async def _converse(self, attempt: _Attempt, call: SessionCall) -> bool:
        """Hello, Welcome, then the server's messages until the stream ends (see ``_session``)."""
        opts = self.opts
        link = SessionLink(call, metrics=self.metrics)
        self.metrics.session_opened(link.counter)
        await link.send(Hello(PROTOCOL_VERSION, opts.client_id, f"slperf {__version__}"))
        welcome = await link.receive()
        if welcome is None:
            await _raise_for_status(call)  # surfaces the server's status (refusals end up here)
            raise ConnectionError("the server closed the session before Welcome")
        if not isinstance(welcome, Welcome):
            raise ConnectionError(f"expected Welcome, got {type(welcome).__name__}")
        attempt.welcomed = True
        link.endpoint.follow(welcome)
        self.metrics.welcomed()
        log.info("connected to %s as %s", opts.server, opts.client_id)
        finished = False
        while True:
            message = await link.receive()
            if message is None:
                await _raise_for_status(call)
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
            if self.fed is not None and self.paradigm is not None and message.reason == RunState.FINISHED:
                try:  # the segment the run ends with is the last average, which the server never held
                    await self._fed_fetch(self.paradigm.config.epochs - 1)
                except FedRefused as exc:
                    log.error("run %s: cannot fetch the final average: %s", message.run_id, exc)
            self.fed = None
            if self.store is not None and message.run_id == self.run_id:
                if message.reason == RunState.FINISHED:
                    await self._keep_final()
                await asyncio.to_thread(self.store.discard, message.run_id)
            self.paradigm = None
            self.run_id = ""
            self._setup_key = None
            self.exchange = None
            self.metrics.run_over()
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
        training = isinstance(part, TrainEpoch)
        await self._align(part.round if training else part.round + 1)
        if self.fed is not None and (part.round > 0 or not training):
            try:  # the average of the round before a training pass, of this round before an evaluation
                await self._fed_fetch(part.round - 1 if training else part.round)
            except FedRefused as exc:
                await self._report(link, grpc.StatusCode.ABORTED, f"{kind} of round {part.round} aborted: {exc}")
                return
        phase = Phase.TRAIN if training else Phase.EVAL
        clock = self.metrics.pass_started(part.round, phase)
        link.begin_pass(self.run_id, self.exchange, clock)
        summary: PhaseSummary | None = None
        try:
            summary = await self._pass(link, part, kind)
        finally:
            link.clock = None
            self.metrics.pass_ended(phase, clock, None if summary is None else summary.steps)
        if summary is None:
            return
        self._pushed.clear()
        if training and self.fed is not None:
            try:  # the trained bottom goes to the fed server, before the server hears the pass is done
                await self._fed_upload(part.round)
            except FedRefused as exc:
                self._pass_failed(training)
                await self._report(link, grpc.StatusCode.ABORTED, f"{kind} of round {part.round} aborted: {exc}")
                return
        if training:
            self._entering = part.round + 1
            await self._save_state()
        await link.send(PhaseDone(StepRef(self.run_id, part.round, summary.steps, phase), summary))

    async def _pass(self, link: SessionLink, part: TrainEpoch | Evaluate, kind: str) -> PhaseSummary | None:
        """The paradigm's pass; None when it failed (reported to the server unless the server ended it)."""
        assert self.paradigm is not None
        training = isinstance(part, TrainEpoch)
        try:
            if isinstance(part, TrainEpoch):
                return await self.paradigm.train_epoch(link, part.round, part.options)
            return await self.paradigm.evaluate(link, part.round)
        except ServerError as exc:
            self._pass_failed(training)
            if exc.code == grpc.StatusCode.ABORTED:
                log.warning("the server ended %s of round %d early: %s", kind, part.round, exc)
                return None
            await self._report(link, grpc.StatusCode.ABORTED, f"{kind} of round {part.round} aborted: {exc}")
            return None
        except (WireError, ValueError) as exc:
            # The server drops this client from the phase when it reports an error; the session goes on.
            self._pass_failed(training)
            await self._report(link, grpc.StatusCode.ABORTED, f"{kind} of round {part.round} aborted: {exc}")
            return None
        except BaseException:
            self._pass_failed(training)
            raise

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
        key = SetupKey(setup.run_id, setup.config_json, setup.client_index, setup.num_clients)
        if self.paradigm is not None and key == self._setup_key:
            log.info("run %s: rejoining with the training state this daemon already holds", setup.run_id)
            self._pushed = {}  # the server pushes again what it wants before the next pass
            await self._ready(link, setup.run_id)
            return
        try:
            config = config_from_json(setup.config_json)
            config = dataclasses.replace(config, device=self.opts.device or config.client_device)
            config = pin_data_dir(config, self.opts.data_dir)
            spec = paradigms.get(config.paradigm)
            if config.torch_threads:
                torch.set_num_threads(config.torch_threads)
            builder = spec.client_data or build_client_data
            data = await asyncio.to_thread(builder, config, setup.client_index, self.opts.cache_dir)
            self.paradigm = await asyncio.to_thread(spec.client, config, setup.client_index, setup.num_clients, data)
            self.exchange = spec.exchange(config, setup.client_index)
            check_setup_exchange(setup.exchange, self.exchange, self.paradigm)
        except (ConfigError, DatasetUnavailable, ValueError) as exc:
            await self._report(link, grpc.StatusCode.FAILED_PRECONDITION, f"cannot set up run {setup.run_id}: {exc}")
            return
        address = fed_server_address(config)
        try:
            fed = (
                None
                if address is None
                else FedClient(address, self.opts.credentials, self.opts.client_id, config.client_timeout)
            )
        except FedRefused as exc:
            await self._report(link, grpc.StatusCode.FAILED_PRECONDITION, f"cannot set up run {setup.run_id}: {exc}")
            return
        self.fed = fed
        self.run_id = setup.run_id
        self._setup_key = key
        self.metrics.run_set_up(setup.run_id, config.paradigm)
        await self._fresh_state(key)
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
        self._pushed[state.segment] = state.tensors

    # -- the fed server (``fed_server:``) ----------------------------------------------------------------------------
    async def _fed_upload(self, round: int) -> None:
        assert self.fed is not None and self.paradigm is not None
        for name, segment in sorted(self.paradigm.segments.items()):
            await self.fed.upload(self.run_id, round, name, host_state(segment), self.paradigm.data.train.num_samples)

    async def _fed_fetch(self, upto: int) -> None:
        """Loads the fed server's latest average (settled up to ``upto``); keeps the held weights when there is none
        yet. An average of another layout is refused like any weights (``check_state``)."""
        assert self.fed is not None and self.paradigm is not None
        for name, segment in sorted(self.paradigm.segments.items()):
            average = await self.fed.fetch(self.run_id, upto, name)
            if average is None:
                log.warning("run %s: the fed server has no average of %r yet; keeping this client's", self.run_id, name)
                continue
            try:
                check_state(average, segment.state_dict())
            except WireError as err:
                raise FedRefused(err.code, f"its average of {name!r} is unusable: {err.message}") from None
            segment.load_state_dict(average, strict=True)
            self._pushed[name] = average

    # -- training state kept on disk (slperf.slclient.state_store) --------------------------------------------
    async def _fresh_state(self, key: SetupKey) -> None:
        """A paradigm just built for ``key`` enters round 0; its initial state is kept unless this run already
        has saved states (a restarted daemon: the first pass loads the one it needs)."""
        self._entering, self._pushed = 0, {}
        if self.store is None:
            return
        await asyncio.to_thread(self.store.forget_other_setups, key)
        if not self.store.rounds(key.run_id):
            await self._save_state()

    async def _save_state(self) -> None:
        if self.store is None or self.paradigm is None or self._setup_key is None or self._entering is None:
            return
        store, key, paradigm, entering = self.store, self._setup_key, self.paradigm, self._entering

        def save() -> None:  # the copy of every segment and buffer too is work for a thread, not the event loop
            store.save(key, Snapshot(entering, paradigm.training_state(), torch.get_rng_state()))

        try:
            await asyncio.to_thread(save)
        except OSError as exc:  # a full or read-only disk costs exact resumption, not the run
            log.error("cannot save the training state under %s: %s", self.store.root, exc)

    async def _keep_final(self) -> None:
        """The run finished: its segments (as the server's last push left them: the ones the final evaluation used)
        are kept for ``slperf predict`` and ``slperf export`` (``StateStore.save_final``)."""
        if self.store is None or self.paradigm is None or self._setup_key is None:
            return
        store, paradigm, key = self.store, self.paradigm, self._setup_key

        def keep() -> None:
            data = paradigm.data
            blocks = segment_blocks(paradigm.config, data.input_shape, data.num_classes, paradigm.segments)
            layout = {
                "config": json.loads(key.config_json),
                "model": paradigm.config.model,
                "model_input_shape": list(data.input_shape),
                "num_classes": data.num_classes,
                "seed": paradigm.config.seed,
                "dataset": paradigm.config.dataset,
                "segments": {name: list(span) for name, span in blocks.items()},
            }
            segments = {name: host_state(module) for name, module in paradigm.segments.items()}
            folder = store.save_final(key.run_id, segments, layout)
            log.info("run %s: final segments %s kept in %s", key.run_id, ", ".join(sorted(blocks)), folder)

        try:
            await asyncio.to_thread(keep)
        except InferenceUnsupported as exc:
            log.info("run %s: no final segments kept: %s", key.run_id, exc)
        except Exception as exc:  # noqa: BLE001 - a full disk (or a model that cannot be laid out) costs them, not the daemon
            log.error("cannot keep the final segments under %s: %s: %s", self.store.root, type(exc).__name__, exc)

    async def _align(self, entering: int) -> None:
        """Before a pass that needs the state entering round ``entering``: if the state held is not that one (a
        restarted daemon holds a fresh one; a restarted server may have rewound a round), the saved one is
        loaded, and the weights the server pushed for this pass are put back on top of it."""
        if self._entering == entering or self.paradigm is None or self._setup_key is None:
            return
        held = "unknown" if self._entering is None else f"entering round {self._entering}"
        snapshot = await asyncio.to_thread(self.store.load, self._setup_key, entering) if self.store else None
        if snapshot is not None:
            try:
                self.paradigm.load_training_state(snapshot.state)
            except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:  # a foreign file's meta
                log.warning("the saved training state entering round %d does not fit this run: %s", entering, exc)
                snapshot = None
        if snapshot is None:
            log.warning(
                "run %s: no saved training state entering round %d (holding: %s); going on with the state held",
                self.run_id,
                entering,
                held,
            )
            return
        if snapshot.rng is not None:
            torch.set_rng_state(snapshot.rng)
        for name, tensors in self._pushed.items():
            self.paradigm.segments[name].load_state_dict(tensors, strict=True)
        self._entering = entering
        log.info("run %s: resumed the training state entering round %d (was %s)", self.run_id, entering, held)

    def _pass_failed(self, training: bool) -> None:
        self._pushed.clear()
        if training:
            self._entering = None  # part of a pass was applied: the state held matches no round

    async def _report(self, link: SessionLink, code: grpc.StatusCode, message: str) -> None:
        log.error("%s", message)
        await link.send(ErrorReport(code, message))


def check_setup_exchange(announced: Exchange, derived: Exchange, paradigm: ClientParadigm) -> None:
    """The exchange the server announced must be the one this client derives from the same config, and this client's
    segments must have the layouts it declares: a difference means the two ends run different software (or a
    paradigm declares what it does not do), and the run would fail at its first message. ValueError says which."""
    if announced != derived:
        raise ValueError(
            "the server's declared exchange differs from this client's (different slperf versions?): server "
            f"{announced.describe()}, client {derived.describe()}"
        )
    held = {name: state_layout(module) for name, module in paradigm.segments.items()}
    declared = {segment.name: segment.tensors for segment in derived.segments}
    if held != declared:
        raise ValueError(
            f"this client's segments {sorted(held)} do not have the layouts the exchange declares {sorted(declared)}"
        )


async def _raise_for_status(call: SessionCall) -> None:
    """After the server ended the stream: raises ``SessionEnded`` unless it ended it with status OK. A stream call
    is not awaitable (a unary one is), so its status comes from ``code()``/``details()``."""
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise SessionEnded(code, await call.details() or "")
