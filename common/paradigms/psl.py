"""Parallel split learning (PSL): every client trains its own bottom at the same time against ONE top
shared on the server; client bottoms are never aggregated (SLPerf ``asy_vanilla``, ``asy_vanilla2``,
``synchronization``; parallel SL in the line of Jeon & Kim 2020).

Who holds what: each client holds its own bottom and its data; the server holds the one top and the loss,
and a copy of every client's bottom; labels go up with the activations.

Protocol, per round:
  1. The server pushes each client its own latest bottom (``set_weights``; a no-op for a client that kept
     its state, the way a client daemon that restarted resumes with its current weights).
  2. Every client streams its shard: activations and labels up, the gradient of its activations down.
     How the one top answers is the option ``server_update``:
       * ``arrival`` (default; SLPerf ``asy_vanilla``): each batch is served as it arrives, one SGD step of
         the top per client batch. The clients run freely; none waits for another.
       * ``sum`` (SLPerf ``asy_vanilla2``; alias ``psl_sum``): lock-step. The server waits for one batch from
         every client still in the pass, runs the top on each, sums their losses (so the top's gradients add
         up over the clients), sends each client the gradient of its own activations, then takes ONE step.
       * ``lockstep`` (SLPerf ``synchronization``; alias ``psl_lockstep``): lock-step. After one batch from
         every client still in the pass, the top is stepped once per client, in client order, each client's
         gradient computed right before its step (client 2 sees the top client 1 just moved).
  3. After its pass the server collects each client's bottom (``get_weights``) and keeps it for step 1 of
     the next round and for checkpoints. Nothing is averaged.
  4. Evaluation: every client streams the test set through its own bottom, the server scores each with the
     shared top; the reported accuracy pools all clients (per-client accuracies in the evaluation's
     ``extra["test_accuracy_per_client"]``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from slperf.common.config import ConfigError, RunConfig
from slperf.common.paradigms.base import ClientHandle, ParadigmSpec, RoundResult, ServerContext
from slperf.common.paradigms.kit.bottom_client import BottomClient
from slperf.common.paradigms.kit.rounds import gather_round
from slperf.common.paradigms.kit.serving import (
    Barrier,
    compute_in_step,
    lockstep_round,
    reply_or_drop,
    serve_in_arrival_order,
)
from slperf.common.paradigms.kit.steps import optimizer_step, top_accumulate, top_train_step, zero_grads
from slperf.common.paradigms.kit.top_server import SharedTopServer, top_exchange
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.threats import Exposure, Seen, ThreatModel
from slperf.common.protocol.types import CutReply, CutTensor, PhaseSummary

SERVER_UPDATES = ("arrival", "sum", "lockstep")

DEVIATIONS = """\
* Lock-step modes need no equal shard sizes. A client whose pass ended (PhaseDone) leaves the barrier and
  the rest go on; a client that drops out (ClientGone) leaves it too and is recorded in
  RoundResult.dropped. SLPerf truncated every shard to the smallest one (or deadlocked).
* synchronization sent a NEXT message to every client after each server round; here the barrier is that
  the server does not read a client's next batch until the round of batches is done. A client's next
  activations depend only on its own bottom, so the training is the same and a message per step is saved.
* The server's train/eval mode comes from the instruction, not from the last message's phase flag.
* SLPerf's per-epoch barrier before validation is kept implicitly: the coordinator evaluates after the
  whole round. Every client evaluates (SLPerf: each client logs its own validation), and the figure is
  computed on the server from the test batches, not summed client-side losses.
* Each client's bottom crosses the wire twice per round (down at the start, up at the end), which SLPerf
  never did: it makes checkpoints hold the whole model and lets a returning client resume. For LeNet cut
  after block 1 that is 624 bytes each way.
* Concurrent batches are served under a lock around the shared top, so "arrival order" holds whatever
  executor ctx.compute uses."""


class PSLServer(SharedTopServer):
    """One shared top; per-client bottoms kept (not averaged) between rounds (steps 1 and 3)."""

    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.server_update = config.options.get("server_update", "arrival")
        self.lock = asyncio.Lock()

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        if self.server_update == "arrival":
            return (await gather_round(clients, lambda c: self._arrival_pass(c, round))).to_result()
        return await lockstep_round(
            clients,
            round,
            lambda c: self.push_bottom(c, round),
            lambda c: self.pull_bottom(c, round),
            self._server_step,
        )

    async def _arrival_pass(self, client: ClientHandle, round: int) -> PhaseSummary:
        await self.push_bottom(client, round)
        summary = await serve_in_arrival_order(self.ctx, self.lock, client, round, self.top, self.optimizer)
        await self.pull_bottom(client, round)
        return summary

    async def _server_step(self, barrier: Barrier, batches: list[tuple[ClientHandle, CutTensor]]) -> None:
        """What the one top does with one batch from every client still in the pass. A batch the server refuses
        (poisoned: nothing of it applied) drops its client from the round; the step goes on with the others'."""
        batches = sorted(batches, key=lambda cb: cb[0].index)
        if self.server_update == "lockstep":
            for client, batch in batches:
                args = (self.top, self.optimizer, batch.tensor, batch.labels)
                out = await compute_in_step(self.ctx, barrier, client, batch, top_train_step, *args)
                if out is not None:
                    reply = CutReply(batch.ref, out.grad, out.loss, out.correct, out.count)
                    await reply_or_drop(barrier, client, reply)
            return
        # "sum": the gradients of all clients' losses add up in the top; one step after the last client.
        await self.ctx.compute(zero_grads, self.optimizer)
        stepped = False
        for client, batch in batches:
            summed = (self.top, batch.tensor, batch.labels)
            out = await compute_in_step(self.ctx, barrier, client, batch, top_accumulate, *summed)
            if out is not None:
                stepped = True
                await reply_or_drop(barrier, client, CutReply(batch.ref, out.grad, out.loss, out.correct, out.count))
        if stepped:
            await self.ctx.compute(optimizer_step, self.optimizer)


def _validate(options: dict[str, Any]) -> None:
    if options["server_update"] not in SERVER_UPDATES:
        raise ConfigError(
            f"option 'server_update' of paradigm 'psl' must be {' or '.join(SERVER_UPDATES)}, "
            f"got {options['server_update']!r}"
        )


SUM = {"server_update": "sum"}
LOCKSTEP = {"server_update": "lockstep"}

THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "every training and evaluation batch of every client"),
        Exposure(Seen.LABELS, "with every batch"),
        Exposure(Seen.CLIENT_WEIGHTS, "each client's own bottom after every pass (kept, never averaged)"),
    ),
    client=(
        Exposure(Seen.CUT_GRADIENTS, "for each of its training batches"),
        Exposure(Seen.WEIGHTS, "its own bottom back, before every pass"),
    ),
    producer="it keeps every client's own bottom and sends it back before each pass",
)


SPEC = register(
    ParadigmSpec(
        name="psl",
        server=PSLServer,
        client=BottomClient,
        exchange=top_exchange,
        threats=THREATS,
        aliases=("asy_vanilla", "asy_vanilla2", "psl_sum", "synchronization", "psl_lockstep"),
        alias_options={"psl_sum": SUM, "asy_vanilla2": SUM, "psl_lockstep": LOCKSTEP, "synchronization": LOCKSTEP},
        options={"server_update": (str, "arrival")},
        validate=_validate,
        summary="parallel clients, one shared top (server_update: arrival|sum|lockstep; psl_sum and psl_lockstep "
        "imply one), no client aggregation",
        deviations=DEVIATIONS,
    )
)
