"""Serving clients' passes on the server: one client against a top, clients in arrival order or in
lock-step, a declared ``Gate`` for paradigms that serve one step at a time, and evaluating through clients.

Every function here takes the client handles and tensors of the plug-in API; none knows a paradigm.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from torch import nn

from slperf.common.paradigms.base import (
    ClientGone,
    ClientHandle,
    ClientMisbehaved,
    EvalResult,
    NoClientLeft,
    RoundResult,
    ServerContext,
)
from slperf.common.paradigms.kit.aggregate import pooled
from slperf.common.paradigms.kit.optim import Optimizer
from slperf.common.paradigms.kit.rounds import first_available, gather_round
from slperf.common.paradigms.kit.steps import PoisonedStep, StepOutcome, top_eval_step, top_train_step
from slperf.common.protocol.types import CutReply, CutTensor, PhaseSummary, State

_forward_backward = functools.partial(top_train_step, step=False)
T = TypeVar("T")


async def refuse_poisoned(client: ClientHandle, round: int, step: int, err: PoisonedStep) -> ClientMisbehaved:
    """Tells the client why the server ends its pass (``Error{ABORTED}``: it stops the pass and waits for the next
    instruction) and returns what drops it from the round as misbehaved."""
    reason = f"round {round} step {step}: the server {err}; its batch was not applied and it is dropped from the round"
    try:
        await client.abort(reason)
    except ClientGone:
        pass
    return ClientMisbehaved(client.client_id, f"poisoned compute: {reason}")


async def compute_or_refuse(
    ctx: ServerContext, client: ClientHandle, batch: CutTensor, fn: Callable[..., T], *args: Any
) -> T:
    """``ctx.compute(fn, *args)`` for one client batch; a ``PoisonedStep`` (the server's own figures of the batch
    are not finite: nothing was applied) drops the client from the round with a reason sent to it."""
    try:
        result: T = await ctx.compute(fn, *args)
        return result
    except PoisonedStep as err:
        raise await refuse_poisoned(client, batch.ref.round, batch.ref.step, err) from None


def counted(outcomes: Sequence[StepOutcome]) -> PhaseSummary:
    """A pass's figures as the server computed them (its own loss, correct counts and the labels it saw)."""
    summary = PhaseSummary()
    for out in outcomes:
        summary.add(out.count, out.loss, out.correct)
    return summary


# -- one client against a top ----------------------------------------------------------------------------
async def serve_training(
    ctx: ServerContext,
    client: ClientHandle,
    round: int,
    top: nn.Module,
    optimizer: Optimizer,
    options: Mapping[str, Any] | None = None,
) -> PhaseSummary:
    """One client's pass against a top only it uses: for each batch, step the top and send the activation
    gradient back.

    The gradient leaves before the top's optimiser step: the step runs in the compute thread while the reply
    travels and the client runs its backward pass (the client needs only the gradient), and it is finished
    before the next batch is touched, so the arithmetic is exactly that of stepping first. The pass's figures
    are the server's own (what it computed per batch), not the client's PhaseDone.
    """
    stream = client.train(round, options)
    outcomes: list[StepOutcome] = []
    async for batch in stream:
        out = await compute_or_refuse(ctx, client, batch, _forward_backward, top, optimizer, batch.tensor, batch.labels)
        outcomes.append(out)
        stepping = asyncio.ensure_future(ctx.compute(optimizer.step))
        try:
            await client.reply(CutReply(batch.ref, out.grad, out.loss, out.correct, out.count))
        finally:
            await stepping
    assert stream.summary is not None
    return counted(outcomes)


async def serve_in_arrival_order(
    ctx: ServerContext,
    lock: asyncio.Lock,
    client: ClientHandle,
    round: int,
    top: nn.Module,
    optimizer: Optimizer,
) -> PhaseSummary:
    """One client's pass against a top other clients share: one step per batch, in the order batches come.
    The lock around the shared top makes "arrival order" hold whatever executor ``ctx.compute`` uses."""
    stream = client.train(round)
    outcomes: list[StepOutcome] = []
    async for batch in stream:
        async with lock:
            out = await compute_or_refuse(
                ctx, client, batch, top_train_step, top, optimizer, batch.tensor, batch.labels
            )
        outcomes.append(out)
        await client.reply(CutReply(batch.ref, out.grad, out.loss, out.correct, out.count))
    assert stream.summary is not None
    return counted(outcomes)


# -- lock-step ---------------------------------------------------------------------------------------------
async def next_batches(streams: Sequence[AsyncIterator[CutTensor] | None]) -> list[CutTensor | ClientGone | None]:
    """The next batch of every stream at once: per position the batch, ``None`` when the stream ended (or is
    ``None``: no longer read), or the ``ClientGone`` of a client that dropped out. Other errors are raised."""

    async def pull(stream: AsyncIterator[CutTensor] | None) -> CutTensor | None:
        if stream is None:
            return None
        try:
            return await anext(stream)
        except StopAsyncIteration:
            return None

    pulled = await asyncio.gather(*(pull(s) for s in streams), return_exceptions=True)
    for outcome in pulled:
        if isinstance(outcome, BaseException) and not isinstance(outcome, ClientGone):
            raise outcome
    return pulled  # type: ignore[return-value]


class Barrier:
    """Yields, per step, one batch from every client still in the pass.

    A client leaves when its stream ends (its summary is kept) or when it drops out (recorded in
    ``dropped``); the others go on, so shards of different sizes never deadlock.
    """

    def __init__(self, clients: Sequence[ClientHandle], round: int):
        self.active: list[ClientHandle] = list(clients)
        self.summaries: dict[str, PhaseSummary] = {}
        self.dropped: list[str] = []
        self.misbehaved: dict[str, str] = {}  # dropped for what they sent: id -> reason
        self._streams = {c.client_id: c.train(round) for c in clients}
        self._iters = {cid: aiter(s) for cid, s in self._streams.items()}

    def drop(self, client: ClientHandle) -> None:
        if client in self.active:
            self.active.remove(client)
        if client.client_id not in self.dropped:
            self.dropped.append(client.client_id)

    def misbehave(self, client: ClientHandle, gone: ClientMisbehaved) -> None:
        """Drops the client for what it sent (its batch was refused), with the reason the round records."""
        self.drop(client)
        self.misbehaved[client.client_id] = gone.reason

    def leave(self, client: ClientHandle, gone: ClientGone) -> None:
        """Drops the client; one dropped for what it sent (a pass past its shard, say) keeps its reason."""
        if isinstance(gone, ClientMisbehaved):
            self.misbehave(client, gone)
        else:
            self.drop(client)

    async def steps(self) -> AsyncIterator[list[tuple[ClientHandle, CutTensor]]]:
        while self.active:
            clients = list(self.active)
            pulled = await next_batches([self._iters[c.client_id] for c in clients])
            batches = []
            for client, outcome in zip(clients, pulled):
                if isinstance(outcome, ClientGone):
                    self.leave(client, outcome)
                elif outcome is None:
                    self.active.remove(client)
                    summary = self._streams[client.client_id].summary
                    self.summaries[client.client_id] = summary if summary is not None else PhaseSummary()
                else:
                    batches.append((client, outcome))
            if batches:
                yield batches


async def reply_or_drop(barrier: Barrier, client: ClientHandle, reply: CutReply) -> None:
    """Replies to one client of a lock-step pass; a client that is gone leaves the barrier."""
    try:
        await client.reply(reply)
    except ClientGone as gone:
        barrier.leave(client, gone)


async def compute_in_step(
    ctx: ServerContext,
    barrier: Barrier,
    client: ClientHandle,
    batch: CutTensor,
    fn: Callable[..., StepOutcome],
    *args: Any,
) -> StepOutcome | None:
    """``ctx.compute(fn, *args)`` for one client's batch of a lock-step step; ``None`` when the server refused it
    (``PoisonedStep``: nothing of it was applied), and the client is then told why and leaves the barrier as
    misbehaved, while the step goes on with the other clients' batches."""
    try:
        return await compute_or_refuse(ctx, client, batch, fn, *args)
    except ClientMisbehaved as gone:
        barrier.misbehave(client, gone)
        return None


ServerStep = Callable[[Barrier, list[tuple[ClientHandle, CutTensor]]], Awaitable[None]]


async def lockstep_round(
    clients: Sequence[ClientHandle],
    round: int,
    push: Callable[[ClientHandle], Awaitable[None]],
    pull: Callable[[ClientHandle], Awaitable[None]],
    server_step: ServerStep,
) -> RoundResult:
    """A lock-step round: ``push`` to every client, then per step ``server_step`` with one batch from every
    client still in the pass (``Barrier``), then ``pull`` from every client that finished its pass."""
    pushed = await gather_round(clients, push)
    ready = pushed.clients
    barrier = Barrier(ready, round)
    async for batches in barrier.steps():
        await server_step(barrier, batches)
    pulled = await gather_round([c for c in ready if c.client_id in barrier.summaries], pull)
    left = [c.client_id for c in clients if c.client_id in pushed.dropped or c.client_id in barrier.dropped]
    return RoundResult(
        participants=[c.client_id for c in pulled.clients],
        dropped=left + pulled.dropped,
        per_client={c.client_id: barrier.summaries[c.client_id] for c in pulled.clients},
        misbehaved={**pushed.misbehaved, **barrier.misbehaved, **pulled.misbehaved},
    )


# -- per-client bottoms kept on the server -------------------------------------------------------------------
async def send_own_bottom(client: ClientHandle, bottoms: Mapping[str, State], initial: State, round: int) -> None:
    """Hands a client its own latest bottom (the initial one before its first pass)."""
    await client.set_weights("bottom", bottoms.get(client.client_id, initial), round)


async def collect_own_bottom(client: ClientHandle, bottoms: dict[str, State], initial: State, round: int) -> None:
    """Keeps the client's bottom after its pass (for its next round and for checkpoints); never averaged."""
    state, _ = await client.get_weights("bottom", round, expected=initial)
    bottoms[client.client_id] = state


# -- one step at a time ----------------------------------------------------------------------------------------
class Gate(Protocol):
    """Who the server serves next when it can serve one client's step at a time (U-shaped: the middle holds
    a step's graph from the head stage to the tail stage). ``acquire`` before a step, ``release`` after it,
    ``leave`` when the client's pass ended or it dropped out (it may be called more than once)."""

    async def acquire(self, client_id: str) -> None: ...

    def release(self, client_id: str) -> None: ...

    def leave(self, client_id: str) -> None: ...


class SerialGate:
    """Steps in arrival order (an asyncio.Lock is FIFO-fair); who asks does not matter, so the ids are unused
    and leaving needs nothing."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def acquire(self, client_id: str) -> None:
        await self._lock.acquire()

    def release(self, client_id: str) -> None:
        self._lock.release()

    def leave(self, client_id: str) -> None:
        return None


class RoundRobinGate:
    """Steps in member order: one step of one member at a time, member 0, member 1, ..., member 0 again; a
    member that has finished (or dropped out) leaves the rotation."""

    def __init__(self, members: Sequence[str]):
        self.order = list(members)
        self.pos = 0
        self.turn = {m: asyncio.Event() for m in members}
        self._wake()

    def _wake(self) -> None:
        if self.order:
            self.turn[self.order[self.pos]].set()

    async def acquire(self, client_id: str) -> None:
        await self.turn[client_id].wait()

    def release(self, client_id: str) -> None:
        self.turn[client_id].clear()
        if client_id in self.order:
            self.pos = (self.order.index(client_id) + 1) % len(self.order)
        self._wake()

    def leave(self, client_id: str) -> None:
        if client_id not in self.order:
            return
        i = self.order.index(client_id)
        self.order.remove(client_id)
        self.turn[client_id].clear()
        if not self.order:
            return
        if i < self.pos:
            self.pos -= 1
        self.pos %= len(self.order)
        self._wake()


# -- evaluation ------------------------------------------------------------------------------------------------
async def evaluate_through(ctx: ServerContext, client: ClientHandle, round: int, top: nn.Module) -> EvalResult:
    """The client streams test-set activations (no reply per batch); the server scores them with its top."""
    scored = PhaseSummary()
    async for batch in client.evaluate(round):
        out = await compute_or_refuse(ctx, client, batch, top_eval_step, top, batch.tensor, batch.labels)
        scored.add(out.count, out.loss, out.correct)
    n = scored.samples
    return EvalResult(accuracy=scored.correct / n if n else 0.0, loss=scored.loss_sum / n if n else 0.0, samples=n)


async def evaluate_first_available(
    ctx: ServerContext, clients: Sequence[ClientHandle], round: int, bottom_state: State, top: nn.Module
) -> EvalResult:
    """Evaluates the global bottom + top through the first client that answers (in the given order): it is
    handed the bottom first, so any client can do it and a dropped one is simply skipped."""

    async def through(client: ClientHandle) -> EvalResult:
        await client.set_weights("bottom", bottom_state, round)
        return await evaluate_through(ctx, client, round, top)

    misbehaved: dict[str, str] = {}
    result = await first_available(clients, through, "evaluate through", misbehaved)
    result.misbehaved.update(misbehaved)
    return result


async def evaluate_every_client(
    ctx: ServerContext,
    round: int,
    clients: Sequence[ClientHandle],
    top: nn.Module,
    push: Callable[[ClientHandle], Awaitable[None]] | None = None,
) -> tuple[EvalResult, dict[str, float]]:
    """Each client scores the test set with its own bottom and the shared top; figures pooled over clients,
    with each client's accuracy by id.

    ``push(client)`` (optional) is awaited first, e.g. to hand the client its latest bottom.
    """

    async def one(client: ClientHandle) -> EvalResult:
        if push is not None:
            await push(client)
        return await evaluate_through(ctx, client, round, top)

    outcome = await gather_round(clients, one)
    if not outcome.done:
        raise NoClientLeft("evaluate through")
    result = pooled([r for _, r in outcome.done])
    result.misbehaved.update(outcome.misbehaved)
    return result, {c.client_id: r.accuracy for c, r in outcome.done}
