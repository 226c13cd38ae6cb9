"""The server paradigm's handle on one client daemon: turns paradigm calls into protocol messages.

It holds the client's current session and keeps using it while it is open; once it closes (the client
reconnected, or dropped), the next call waits for the live one and sets the client up for the run again, so
a client that reconnects rejoins with the weights the paradigm hands it next. Every message it reads back
is checked against the run, round, phase and step it expects, and against the paradigm's spec.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, TypeVar

import grpc
import torch

from slperf.common.config import RunConfig
from slperf.common.paradigms import registry as paradigms
from slperf.common.paradigms.base import ClientGone, ClientMisbehaved, Disagreement
from slperf.common.privacy.observer import PrivacyObserver
from slperf.common.protocol.errors import WireError
from slperf.common.protocol.exchange import Exchange, Stage
from slperf.common.protocol.messages import (
    ClientMessage,
    ErrorReport,
    Evaluate,
    Finish,
    ModelState,
    PhaseDone,
    Ready,
    RequestWeights,
    RunSetup,
    ServerMessage,
    TrainEpoch,
)
from slperf.common.protocol.types import CutReply, CutTensor, Phase, PhaseSummary, SessionState, State, StepRef
from slperf.common.protocol.untrusted import shown
from slperf.common.wire.codec import check_state
from slperf.common.wire.compressed import ErrorFeedback
from slperf.slserver.figures import batches_of, bounded_summary, capped, eval_bound, shard_bound
from slperf.slserver.sessions import Session, SessionRegistry

M = TypeVar("M")


class ClientProxy:
    def __init__(self, client_id: str, index: int, registry: SessionRegistry, config: RunConfig, run_id: str):
        self.client_id = client_id
        self.index = index
        self.train_samples = 0
        self.test_samples = 0
        self._registry = registry
        self._config = config
        self._run_id = run_id
        self._session: Session | None = None  # the session this client was last set up on
        self._timeout = config.client_timeout
        # What this client's cut tensors must look like, as the paradigm declares it (the client holds the same).
        spec = paradigms.get(config.paradigm)
        self.exchange = spec.exchange(config, index)
        # The most samples its shards can hold: a claim above is capped (a paradigm with data of its own, such as
        # multitask's per-task sets, has no bound the server knows).
        self._train_bound = shard_bound(config) if spec.client_data is None else None
        self._test_bound = eval_bound(config) if spec.client_data is None else None
        # Figures this client reported that the server did not take as given, since the coordinator last asked.
        self._disagreements: list[Disagreement] = []
        # The run's attacks' observer (``attacks:``), told of what this client sent and was sent; None: no attacks.
        self.observer: PrivacyObserver | None = None
        self._feedback = ErrorFeedback()  # top-k error feedback of this client's reply tensors (topk:F:ef)
        # The pass now open (run, round, phase), and the passes the server ended early (Error{ABORTED}): a client
        # that streams without waiting for replies (every evaluation pass) has sent the rest of such a pass before it
        # reads the ABORTED, and those leftovers must not be read as the first messages of its next pass.
        self._open: tuple[str, int, Phase] | None = None
        self._ended: set[tuple[str, int, Phase]] = set()

    # -- session plumbing -------------------------------------------------------------------------
    async def session(self) -> Session:
        """The live session, set up for this run (again, after a reconnect)."""
        session = self._session
        if session is not None and not session.closed.is_set():
            return session
        try:
            session = await self._registry.wait_session(self.client_id, self._config.rejoin_timeout)
        except TimeoutError:
            raise ClientGone(
                self.client_id, f"not connected (waited rejoin_timeout = {self._config.rejoin_timeout:.0f} s)"
            ) from None
        session.in_run = self._run_id
        session.drain()
        setup = RunSetup(self._run_id, self._config.to_json(), self.index, self._config.clients, self.exchange)
        await self._send(session, setup)
        while True:
            ready = await self._expect(session, Ready)
            if ready.run_id == self._run_id:
                break
            await session.send_error(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"ready for run {ready.run_id!r} while setting up run {self._run_id!r}",
            )
        self.train_samples = self._assigned(ready.train_samples, self._train_bound, "train_samples")
        self.test_samples = self._assigned(ready.test_samples, self._test_bound, "test_samples")
        self._session = session
        session.state = SessionState.IN_RUN
        return session

    def _assigned(self, claimed: int, bound: int | None, figure: str) -> int:
        used = capped(claimed, bound)
        if used != claimed:
            self._disagreements.append(Disagreement(self.client_id, -1, figure, claimed, used))
        return used

    def take_disagreements(self) -> list[Disagreement]:
        """The figures this client reported that the server bounded since the last call (for the round's record)."""
        found, self._disagreements = self._disagreements, []
        return found

    async def _send(self, session: Session, message: ServerMessage) -> None:
        try:
            await session.send(message)
        except ConnectionError as exc:  # the session closed itself if the write failed
            raise ClientGone(self.client_id, f"send failed: {exc}") from None

    async def _next(self, session: Session, deadline: float | None = None) -> ClientMessage:
        """The client's next message, leftovers of a pass the server ended early skipped; ``deadline`` (loop time)
        ends its pass there (``phase_timeout``)."""
        while True:
            message = await self._read(session, deadline)
            if not isinstance(message, (CutTensor, PhaseDone)):
                return message
            ref = message.ref
            key = (ref.run_id, ref.round, ref.phase)
            if key not in self._ended:
                return message
            if isinstance(message, PhaseDone):  # nothing more of that pass can come
                self._ended.discard(key)

    def _end_pass(self) -> None:
        """The open pass is over for the server: what the client still sends of it is dropped unread."""
        if self._open is not None:
            self._ended.add(self._open)
            self._open = None

    async def _read(self, session: Session, deadline: float | None = None) -> ClientMessage:
        if deadline is not None:
            left = deadline - asyncio.get_running_loop().time()
            if left < self._timeout:
                try:
                    message = await session.next(max(left, 0.0))
                except TimeoutError:
                    reason = f"its pass took longer than phase_timeout = {self._config.phase_timeout:.0f} s"
                    self._end_pass()
                    await session.send_error(grpc.StatusCode.ABORTED, f"{reason}; dropped from the round")
                    raise ClientGone(self.client_id, reason) from None
                except ConnectionError as exc:
                    raise ClientGone(self.client_id, str(exc)) from None
                if isinstance(message, ErrorReport):
                    raise ClientGone(self.client_id, f"client reported an error: {message.message}")
                return message
        try:
            message = await session.next(self._timeout)
        except TimeoutError:
            # A client dropped for silence must not keep this stream: if it resumed, the instructions queued
            # on it would keep the client one round behind the server for the rest of the run.
            session.close(
                f"dropped: no message for {self._timeout:.0f} s (client_timeout)", grpc.StatusCode.DEADLINE_EXCEEDED
            )
            raise ClientGone(self.client_id, f"no message for {self._timeout:.0f} s (client_timeout)") from None
        except ConnectionError as exc:
            raise ClientGone(self.client_id, str(exc)) from None
        if isinstance(message, ErrorReport):
            raise ClientGone(self.client_id, f"client reported an error: {shown(message.message)}")
        return message

    async def _expect(self, session: Session, kind: type[M]) -> M:
        """Reads until a message of ``kind`` arrives; anything else is refused with FAILED_PRECONDITION."""
        while True:
            message = await self._next(session)
            if isinstance(message, kind):
                return message
            await session.send_error(
                grpc.StatusCode.FAILED_PRECONDITION, f"expected {_name(kind)}, got {_name(type(message))}; dropped"
            )

    # -- ClientHandle -------------------------------------------------------------------------------
    async def set_weights(self, segment: str, state: Mapping[str, torch.Tensor], round: int) -> None:
        session = await self.session()
        await self._send(session, ModelState(self._run_id, round, segment, dict(state)))
        if self.observer is not None:
            self.observer.weights_sent(self.client_id, self.index, segment, round, state)

    async def get_weights(self, segment: str, round: int, expected: Mapping[str, torch.Tensor]) -> tuple[State, int]:
        session = await self.session()
        await self._send(session, RequestWeights(self._run_id, round, segment))
        while True:
            state = await self._expect(session, ModelState)
            if (state.run_id, state.round, state.segment) != (self._run_id, round, segment):
                await session.send_error(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"weights for {state.run_id}/{state.round}/{state.segment!r} are not the ones requested",
                )
                continue
            try:
                check_state(state.tensors, expected)
            except WireError as err:
                await session.send_error(err.code, err.message)
                raise ClientGone(self.client_id, f"sent unusable weights: {err.message}") from None
            return state.tensors, state.num_samples

    def train(self, round: int, options: Mapping[str, Any] | None = None) -> ProxyPhaseStream:
        instruction = TrainEpoch(self._run_id, round, dict(options or {}))
        return ProxyPhaseStream(self.run_pass(instruction, StepRef(self._run_id, round, 0, Phase.TRAIN)))

    def evaluate(self, round: int) -> ProxyPhaseStream:
        return ProxyPhaseStream(
            self.run_pass(Evaluate(self._run_id, round), StepRef(self._run_id, round, 0, Phase.EVAL))
        )

    async def reply(self, reply: CutReply) -> None:
        """Sends ``reply`` with the codec the exchange declares for its stage's reply tensor (top-k error feedback
        kept per client and stage, over one training pass)."""
        stage = self.exchange.stage(reply.ref.phase, reply.ref.stage)
        if stage.down is not None and reply.tensor is not None:
            codec = stage.down.codec
            tensor = reply.tensor
            if reply.ref.phase is Phase.TRAIN:
                tensor = self._feedback.apply(reply.ref.stage, tensor, codec)
            reply = dataclasses.replace(reply, tensor=tensor, codec=codec)
        await self._send(await self.session(), reply)

    async def abort(self, reason: str) -> None:
        self._end_pass()
        session = self._registry.get(self.client_id)
        if session is not None:
            await session.send_error(grpc.StatusCode.ABORTED, reason)

    async def finish(self, reason: str) -> None:
        session = self._registry.get(self.client_id)
        if session is None:
            return
        try:
            await session.send(Finish(self._run_id, reason))
        except ConnectionError:
            pass
        session.in_run = None
        session.state = SessionState.IDLE

    # -- one pass -------------------------------------------------------------------------------------
    async def run_pass(
        self, instruction: TrainEpoch | Evaluate, first: StepRef
    ) -> AsyncGenerator[CutTensor | PhaseSummary, None]:
        """Sends the instruction, then yields the pass's cut tensors in step and stage order (as the exchange
        declares them) and finally its summary. Messages that do not fit are refused on the stream and skipped."""
        session = await self.session()
        self._feedback.clear()
        self._open = (first.run_id, first.round, first.phase)
        await self._send(session, instruction)
        stages = self.exchange.stages(first.phase)
        stage = 0
        expect = StepRef(first.run_id, first.round, 0, first.phase, stages[0].name if stages else "")
        training = first.phase == Phase.TRAIN
        samples = self.train_samples if training else self.test_samples
        batch_size = self._config.batch_size if training else self._config.eval_batch_size
        # The pass ends at its shard's batches: a client that goes on is refused (7 500 steps for a 6-batch shard
        # kept a round open for ever), and at phase_timeout whatever it does.
        max_steps = batches_of(samples, batch_size)
        deadline = asyncio.get_running_loop().time() + self._config.phase_timeout
        observed = PhaseSummary()  # the steps and samples the server saw
        while True:
            message = await self._next(session, deadline)
            if isinstance(message, PhaseDone):
                ref = message.ref
                if (ref.run_id, ref.round, ref.phase) != (expect.run_id, expect.round, expect.phase):
                    await session.send_error(
                        grpc.StatusCode.FAILED_PRECONDITION, "phase_done for another phase; dropped"
                    )
                    continue
                summary, found = bounded_summary(
                    self.client_id,
                    first.round,
                    first.phase,
                    message.summary,
                    observed if stages else None,
                    samples,
                    batch_size,
                )
                self._disagreements.extend(found)
                self._open = None
                yield summary
                return
            if not isinstance(message, CutTensor):
                await session.send_error(
                    grpc.StatusCode.FAILED_PRECONDITION, f"expected cut_tensor, got {_name(type(message))}; dropped"
                )
                continue
            try:
                check_cut_tensor(message, expect, self.exchange, stages[stage] if stages else None)
            except WireError as err:
                await session.send_error(err.code, err.message)
                continue
            if stage == 0:
                if expect.step >= max_steps:
                    reason = (
                        f"sent more steps than its pass has: step {expect.step} of a {first.phase.name.lower()} pass "
                        f"over {samples} samples in batches of {batch_size} ({max_steps} steps)"
                    )
                    self._end_pass()
                    await session.send_error(grpc.StatusCode.ABORTED, f"{reason}; dropped from the round")
                    raise ClientMisbehaved(self.client_id, reason)
                observed.add(int(message.tensor.shape[0]))
            if self.observer is not None:
                self.observer.cut_tensor(self.client_id, self.index, message)
            yield message
            stage = (stage + 1) % len(stages)
            step = expect.step + (1 if stage == 0 else 0)
            expect = StepRef(expect.run_id, expect.round, step, expect.phase, stages[stage].name)


class ProxyPhaseStream:
    """Cut tensors of one pass in step (and stage) order; ``summary`` is set once the client says it is done."""

    def __init__(self, items: AsyncGenerator[CutTensor | PhaseSummary, None]):
        self._items = items
        self.summary: PhaseSummary | None = None

    def __aiter__(self) -> AsyncIterator[CutTensor]:
        return self._run()

    async def _run(self) -> AsyncIterator[CutTensor]:
        try:
            async for item in self._items:
                if isinstance(item, PhaseSummary):
                    self.summary = item
                    return
                yield item
        finally:
            await self._items.aclose()


def check_cut_tensor(message: CutTensor, expect: StepRef, exchange: Exchange, stage: Stage | None) -> None:
    """Refuses a cut tensor that is not the step the server expects, or not what the exchange declares for it."""
    ref = message.ref
    if stage is None:
        raise WireError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"this paradigm sends no cut tensors in a {expect.phase.name.lower()} pass",
        )
    if ref != expect:
        code = grpc.StatusCode.FAILED_PRECONDITION
        if ref.run_id == expect.run_id and ref.round == expect.round and ref.step < expect.step:
            raise WireError(code, f"duplicate step {ref.step} (expected {expect.step}); not applied twice")
        raise WireError(
            code,
            f"cut tensor for run {ref.run_id!r} round {ref.round} step {ref.step} "
            f"{ref.phase.name.lower()} stage {ref.stage!r} arrived while the server expects round "
            f"{expect.round} step {expect.step} {expect.phase.name.lower()} stage {expect.stage!r}",
        )
    exchange.check_up(message, stage)


def _name(kind: type) -> str:
    """A message class's wire name (``CutTensor`` -> ``cut_tensor``), for error texts a foreign client can act on."""
    return {"ErrorReport": "error"}.get(kind.__name__) or "".join(
        "_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(kind.__name__)
    )
