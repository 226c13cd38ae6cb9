"""Parallel split learning (PSL): every client trains its own bottom at the same time against ONE top
shared on the server; client bottoms are never aggregated (SLPerf ``asy_vanilla``, ``asy_vanilla2``,
``synchronization``; parallel SL in the line of Jeon & Kim 2020).

Protocol, per round:
  1. The server pushes each client its own latest bottom (``set_weights``; a no-op for a client that kept
     its state, the way a client daemon that restarted resumes with its current weights).
  2. Every client streams its shard: activations and labels up, the gradient of its activations down.
     How the one top answers is the option ``server_update``:
       * ``arrival`` (default; SLPerf ``asy_vanilla``): each batch is served as it arrives, one SGD step of
         the top per client batch. The clients run freely; none waits for another.
       * ``sum`` (SLPerf ``asy_vanilla2``): lock-step. The server waits for one batch from every client still
         in the pass, runs the top on each, sums their losses (so the top's gradients add up over the
         clients), sends each client the gradient of its own activations, then takes ONE optimiser step.
       * ``lockstep`` (SLPerf ``synchronization``): lock-step. After one batch from every client still in the
         pass, the top is stepped once per client, in client order, each client's gradient computed right
         before its step (client 2 sees the top client 1 just moved).
  3. After its pass the server collects each client's bottom (``get_weights``) and keeps it for step 1 of
     the next round and for checkpoints. Nothing is averaged.
  4. Evaluation: every client streams the test set through its own bottom, the server scores each with the
     shared top; the reported accuracy pools all clients (per-client figures go in the round's ``extra``).

Names: ``psl`` (alias ``asy_vanilla``) takes ``server_update``; ``psl_sum`` (alias ``asy_vanilla2``) and
``psl_lockstep`` (alias ``synchronization``) are the same halves with the option pinned (see the bottom).

Deliberate deviations from SLPerf's code:
  * Lock-step modes need no equal shard sizes. A client whose pass ended (PhaseDone) leaves the barrier and
    the rest go on; a client that drops out (ClientGone) leaves it too and is recorded in
    ``RoundResult.dropped``. SLPerf truncated every shard to the smallest one (or deadlocked).
  * ``synchronization`` sent a NEXT message to every client after each server round; here the barrier is
    that the server does not *read* a client's next batch until the round of batches is done. A client's
    next activations depend only on its own bottom, so the training is the same and a message per step is
    saved.
  * The server's train/eval mode comes from the instruction, not from the last message's ``phase`` flag.
  * SLPerf's per-epoch barrier before validation is kept implicitly: the coordinator evaluates after the
    whole round. Every client evaluates (SLPerf: each client logs its own validation), and the figure is
    computed on the server from the test batches, not summed client-side losses.
  * Each client's bottom crosses the wire twice per round (down at the start, up at the end), which SLPerf
    never did: it makes checkpoints hold the whole model and lets a returning client resume. For LeNet cut
    after block 1 that is 624 bytes each way.
  * Concurrent batches are served under a lock around the shared top, so "arrival order" holds whatever
    executor ``ctx.compute`` uses.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slperf.common.config import ConfigError
from slperf.common.paradigms.base import ActivationSpec, ClientGone, ClientHandle, EvalResult, ParadigmSpec, RoundResult, ServerContext
from slperf.common.protocol.types import ActivationBatch, PhaseSummary, Reply, State
from slperf.common.paradigms.bottom_client import BottomClient
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.steps import StepOutcome, clone_state, make_optimizer, top_train_step
from slperf.common.paradigms.top_server import TopHolder, evaluate_through

SERVER_UPDATES = ("arrival", "sum", "lockstep")


# -- compute steps (run off the event loop through ctx.compute) -------------------------------------------
def zero_grads(optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)


def top_accumulate(top: nn.Module, acts: torch.Tensor, labels: torch.Tensor) -> StepOutcome:
    """Forward one client's batch and add the gradient of its loss to the top's (no step)."""
    top.train()
    acts = acts.detach().requires_grad_(True)
    logits = top(acts)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    correct = int((logits.detach().argmax(1) == labels).sum())
    return StepOutcome(acts.grad, float(loss.detach()), correct, int(labels.shape[0]))


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    optimizer.step()


# -- serving one client in arrival order (also used by splitfed_v2) ---------------------------------------
async def serve_in_arrival_order(ctx: ServerContext, lock: asyncio.Lock, client: ClientHandle, round: int,
                                 spec: ActivationSpec, top: nn.Module, optimizer) -> PhaseSummary:
    """One client's pass against a top other clients share: one step per batch, in the order batches come."""
    stream = client.train(round, spec)
    async for batch in stream:
        async with lock:
            out = await ctx.compute(top_train_step, top, optimizer, batch.tensor, batch.labels)
        await client.reply(Reply(batch.ref, out.grad, out.loss, out.correct, out.count))
    assert stream.summary is not None
    return stream.summary


# -- the lock-step barrier (also used by sglr) --------------------------------------------------------------
class Barrier:
    """Yields, per step, one batch from every client still in the pass.

    A client leaves when its stream ends (its summary is kept) or when it drops out (recorded in
    ``dropped``); the others go on, so shards of different sizes never deadlock.
    """

    def __init__(self, clients: Sequence[ClientHandle], round: int, spec: ActivationSpec):
        self.active: list[ClientHandle] = list(clients)
        self.summaries: dict[str, PhaseSummary] = {}
        self.dropped: list[str] = []
        self._streams = {c.client_id: c.train(round, spec) for c in clients}
        self._iters = {cid: aiter(s) for cid, s in self._streams.items()}

    async def _pull(self, client: ClientHandle) -> ActivationBatch | None:
        try:
            return await anext(self._iters[client.client_id])
        except StopAsyncIteration:
            return None

    def drop(self, client: ClientHandle) -> None:
        if client in self.active:
            self.active.remove(client)
        if client.client_id not in self.dropped:
            self.dropped.append(client.client_id)

    async def steps(self) -> AsyncIterator[list[tuple[ClientHandle, ActivationBatch]]]:
        while self.active:
            pulled = await asyncio.gather(*(self._pull(c) for c in self.active), return_exceptions=True)
            batches = []
            for client, outcome in zip(list(self.active), pulled):
                if isinstance(outcome, ClientGone):
                    self.drop(client)
                elif isinstance(outcome, BaseException):
                    raise outcome
                elif outcome is None:
                    self.active.remove(client)
                    summary = self._streams[client.client_id].summary
                    self.summaries[client.client_id] = summary if summary is not None else PhaseSummary()
                else:
                    batches.append((client, outcome))
            if batches:
                yield batches


async def reply_or_drop(barrier: Barrier, client: ClientHandle, reply: Reply) -> None:
    try:
        await client.reply(reply)
    except ClientGone:
        barrier.drop(client)


# -- evaluation through every client (also used by sglr) -----------------------------------------------------
async def evaluate_every_client(ctx: ServerContext, round: int, clients: Sequence[ClientHandle],
                                spec: ActivationSpec, top: nn.Module, push=None) -> tuple[EvalResult, dict[str, float]]:
    """Each client scores the test set with its own bottom and the shared top; figures pooled over clients.

    ``push(client)`` (optional) is awaited first, e.g. to hand the client its latest bottom.
    """
    async def one(client: ClientHandle) -> EvalResult:
        if push is not None:
            await push(client)
        return await evaluate_through(ctx, client, round, spec, top)

    outcomes = await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)
    per_client: dict[str, float] = {}
    correct = loss = 0.0
    samples = 0
    for client, outcome in zip(clients, outcomes):
        if isinstance(outcome, ClientGone):
            continue
        if isinstance(outcome, BaseException):
            raise outcome
        per_client[client.client_id] = outcome.accuracy
        correct += outcome.accuracy * outcome.samples
        loss += outcome.loss * outcome.samples
        samples += outcome.samples
    if not per_client:
        raise ClientGone("*", "no client left to evaluate through")
    return EvalResult(accuracy=correct / samples if samples else 0.0, loss=loss / samples if samples else 0.0,
                      samples=samples), per_client


# -- the server half ----------------------------------------------------------------------------------------
class PSLServer(TopHolder):
    """One shared top; per-client bottoms kept (not averaged) between rounds."""

    def __init__(self, config, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...],
                 server_lr: float | None = None):
        super().__init__(config, ctx, num_classes, input_shape)
        split = self.build_split()
        self.top = split.segments[1]
        self.optimizer = make_optimizer(self.top.parameters(), config, lr=server_lr)
        self.init_bottom = clone_state(split.segments[0])
        self.bottoms: dict[str, State] = {}
        self.train_spec = self.activation_spec(split, config.batch_size)
        self.eval_spec = self.activation_spec(split, config.eval_batch_size)
        self.mode = config.options.get("server_update", "arrival")
        self.lock = asyncio.Lock()
        self._last_result: RoundResult | None = None

    # Step 1 and 3: each client's own bottom goes down before its pass and comes back after it.
    async def push_bottom(self, client: ClientHandle, round: int) -> None:
        await client.set_weights("bottom", self.bottoms.get(client.client_id, self.init_bottom), round)

    async def pull_bottom(self, client: ClientHandle, round: int) -> None:
        state, _ = await client.get_weights("bottom", round, expected=self.init_bottom)
        self.bottoms[client.client_id] = state

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        if self.mode == "arrival":
            result = await self._arrival_round(round, clients)
        else:
            result = await self._lockstep_round(round, clients)
        self._last_result = result
        return result

    async def _arrival_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        async def one(client: ClientHandle) -> PhaseSummary:
            await self.push_bottom(client, round)
            summary = await serve_in_arrival_order(self.ctx, self.lock, client, round, self.train_spec,
                                                   self.top, self.optimizer)
            await self.pull_bottom(client, round)
            return summary

        outcomes = await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)
        result = RoundResult(participants=[])
        for client, outcome in zip(clients, outcomes):
            if isinstance(outcome, ClientGone):
                result.dropped.append(client.client_id)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                result.participants.append(client.client_id)
                result.per_client[client.client_id] = outcome
        return result

    async def _lockstep_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        ready = await self._push_all(round, clients)
        barrier = Barrier(ready, round, self.train_spec)
        async for batches in barrier.steps():
            await self.server_step(round, barrier, batches)
        return await self._finish_lockstep(round, clients, ready, barrier)

    async def _push_all(self, round: int, clients: Sequence[ClientHandle]) -> list[ClientHandle]:
        outcomes = await asyncio.gather(*(self.push_bottom(c, round) for c in clients), return_exceptions=True)
        ready = []
        for client, outcome in zip(clients, outcomes):
            if isinstance(outcome, BaseException) and not isinstance(outcome, ClientGone):
                raise outcome
            if outcome is None:
                ready.append(client)
        return ready

    async def _finish_lockstep(self, round: int, clients: Sequence[ClientHandle], ready: list[ClientHandle],
                               barrier: Barrier) -> RoundResult:
        done = [c for c in ready if c.client_id in barrier.summaries]
        outcomes = await asyncio.gather(*(self.pull_bottom(c, round) for c in done), return_exceptions=True)
        result = RoundResult(participants=[])
        for client in clients:
            if client not in ready or client.client_id in barrier.dropped:
                result.dropped.append(client.client_id)
        for client, outcome in zip(done, outcomes):
            if isinstance(outcome, ClientGone):
                result.dropped.append(client.client_id)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                result.participants.append(client.client_id)
                result.per_client[client.client_id] = barrier.summaries[client.client_id]
        return result

    async def server_step(self, round: int, barrier: Barrier,
                          batches: list[tuple[ClientHandle, ActivationBatch]]) -> None:
        """What the one top does with one batch from every client still in the pass."""
        batches = sorted(batches, key=lambda cb: cb[0].index)
        if self.mode == "lockstep":
            for client, batch in batches:
                out = await self.ctx.compute(top_train_step, self.top, self.optimizer, batch.tensor, batch.labels)
                await reply_or_drop(barrier, client, Reply(batch.ref, out.grad, out.loss, out.correct, out.count))
            return
        # "sum": the gradients of all clients' losses add up in the top; one step after the last client.
        await self.ctx.compute(zero_grads, self.optimizer)
        for client, batch in batches:
            out = await self.ctx.compute(top_accumulate, self.top, batch.tensor, batch.labels)
            await reply_or_drop(barrier, client, Reply(batch.ref, out.grad, out.loss, out.correct, out.count))
        await self.ctx.compute(optimizer_step, self.optimizer)

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        result, per_client = await evaluate_every_client(
            self.ctx, round, clients, self.eval_spec, self.top, push=lambda c: self.push_bottom(c, round))
        if self._last_result is not None:  # the coordinator records the round's ``extra`` after evaluating
            self._last_result.extra["test_accuracy_per_client"] = per_client
        return result

    def model_state(self) -> dict[str, State]:
        out = {"top": clone_state(self.top)}
        for cid, state in sorted(self.bottoms.items()):
            out[f"bottom/{cid}"] = state
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"top": self.top.state_dict(), "optimizer": self.optimizer.state_dict(), "bottoms": self.bottoms}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.top.load_state_dict(state["top"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.bottoms = {cid: dict(s) for cid, s in state["bottoms"].items()}


def _check_mode(name: str, allowed: tuple[str, ...]):
    def validate(options: dict[str, Any]) -> None:
        if options["server_update"] not in allowed:
            raise ConfigError(f"option 'server_update' of paradigm '{name}' must be "
                              f"{' or '.join(allowed)}, got {options['server_update']!r}")
    return validate


SPEC = register(ParadigmSpec(
    name="psl", server=PSLServer, client=BottomClient, aliases=("asy_vanilla",),
    options={"server_update": (str, "arrival")}, validate=_check_mode("psl", SERVER_UPDATES),
    summary="parallel clients, one shared top (server_update: arrival|sum|lockstep), no client aggregation",
))

# SLPerf's two lock-step variants are psl with a fixed ``server_update``. A registry alias cannot carry an
# option value, so each is a spec of its own (same halves) whose option is pinned: ``variants_type:
# asy_vanilla2`` resolves to ``paradigm: psl_sum`` with ``server_update: sum`` in the resolved config.
SUM_SPEC = register(ParadigmSpec(
    name="psl_sum", server=PSLServer, client=BottomClient, aliases=("asy_vanilla2",), time_factor=1.1,
    options={"server_update": (str, "sum")}, validate=_check_mode("psl_sum", ("sum",)),
    summary="psl with server_update: sum (lock-step, losses of all clients summed, one server step)",
))
LOCKSTEP_SPEC = register(ParadigmSpec(
    name="psl_lockstep", server=PSLServer, client=BottomClient, aliases=("synchronization",), time_factor=1.1,
    options={"server_update": (str, "lockstep")}, validate=_check_mode("psl_lockstep", ("lockstep",)),
    summary="psl with server_update: lockstep (lock-step, one server step per client in turn)",
))
