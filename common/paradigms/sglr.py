"""SGLR: server-side local gradient averaging and learning-rate acceleration (Pal et al. 2021,
arXiv 2112.05929; SLPerf ``SGLR``).

Parallel clients with their own bottoms and labels sent to the server, as in ``psl``; the server holds ONE
top. Protocol, per round:
  1. As psl: each client gets its own latest bottom, and returns it after its pass (never averaged).
  2. Lock-step: the server waits for one batch from every client still in the pass (the kit's ``Barrier``), then
       a. zeroes the top's gradients, runs the top on every client's batch and back-propagates each
          client's loss, so the top's gradients are the SUM over the clients' losses, and keeps each client's
          cut-layer gradient g_i;
       b. draws the averaging set A: round(n x ``splitavg_active``) of the n clients in this step (half-up),
          uniformly at random from a generator seeded by (config.seed, round, step), so a rerun is the same;
       c. sends every client in A the element-wise mean of g_i over A, and every other client its own g_i;
       d. takes ONE optimiser step of the top with the server learning rate lr x N^``splitlr_alpha`` (N = the
          run's number of clients); the clients keep ``lr``.
  3. Evaluation as psl: every client through its own bottom and the shared top, figures pooled.

Options (SLPerf keys accepted): ``splitavg_active`` (``SGLR_splitAvg_active``, default 0.5) and
``splitlr_alpha`` (``SGLR_splitLR_alpha``, default 0.5; 0 switches the acceleration off, which SLPerf's
ignored ``SGLR_splitLR`` flag meant to do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from slperf.common.config import ConfigError, RunConfig
from slperf.common.paradigms.base import ClientHandle, ParadigmSpec, RoundResult, ServerContext
from slperf.common.paradigms.kit.bottom_client import BottomClient
from slperf.common.paradigms.kit.serving import Barrier, compute_in_step, lockstep_round, reply_or_drop
from slperf.common.paradigms.kit.steps import optimizer_step, top_accumulate, zero_grads
from slperf.common.paradigms.kit.top_server import SharedTopServer, top_exchange
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.threats import Exposure, Seen, ThreatModel
from slperf.common.protocol.types import CutReply, CutTensor

DEVIATIONS = """\
* The top's gradients are zeroed before every server step; SLPerf never zeroed them during training, so
  every step applied the sum of all gradients since the start of the epoch.
* Evaluation scores every client's own test batches; SLPerf scored the last-arrived batch N times and sent
  every client the same figure.
* The averaging set is drawn with half-up rounding from a seeded generator (SLPerf: Python round,
  i.e. banker's rounding, from the unseeded global random); an empty set (round(n x p) = 0) means no
  averaging instead of a division by zero.
* Clients whose batches differ in shape (a last, smaller batch; shards of different sizes) are averaged
  only with the members of A whose batch has the same shape; a member with no such partner gets its own
  gradient. SLPerf required identical batch shapes. A client whose pass ended leaves the barrier (no
  truncation of shards to the smallest)."""


def averaging_set(seed: int, round: int, step: int, n: int, fraction: float) -> list[int]:
    """Positions (0..n-1) of the clients that receive the mean gradient at this step."""
    k = min(n, int(np.floor(n * fraction + 0.5)))
    rng = np.random.default_rng([seed, round, step])
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


def split_average(grads: Sequence[torch.Tensor], active: Sequence[int]) -> list[torch.Tensor]:
    """Every position in ``active`` gets the mean of the active gradients of its shape; others keep theirs."""
    out = list(grads)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i in active:
        by_shape.setdefault(tuple(grads[i].shape), []).append(i)
    for members in by_shape.values():
        mean = torch.stack([grads[i] for i in members]).mean(0)
        for i in members:
            out[i] = mean
    return out


class SGLRServer(SharedTopServer):
    """One shared top stepped with the accelerated learning rate; per-client bottoms (steps 1 and 3)."""

    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        self.active_fraction = float(config.options["splitavg_active"])
        self.alpha = float(config.options["splitlr_alpha"])
        server_lr = config.lr * config.clients**self.alpha
        super().__init__(config, ctx, num_classes, input_shape, server_lr=server_lr)

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        async def server_step(barrier: Barrier, batches: list[tuple[ClientHandle, CutTensor]]) -> None:
            await self._server_step(round, barrier, batches)

        return await lockstep_round(
            clients, round, lambda c: self.push_bottom(c, round), lambda c: self.pull_bottom(c, round), server_step
        )

    async def _server_step(self, round: int, barrier: Barrier, batches: list[tuple[ClientHandle, CutTensor]]) -> None:
        """Step 2 with one batch from every client still in the pass. A batch the server refuses (poisoned:
        nothing of it applied) drops its client from the round; the step goes on with the others' batches."""
        batches = sorted(batches, key=lambda cb: cb[0].index)
        step = batches[0][1].ref.step
        # a. the summed loss of every client's batch; each client's own cut-layer gradient.
        await self.ctx.compute(zero_grads, self.optimizer)
        accepted, outs = [], []
        for client, batch in batches:
            args = (self.top, batch.tensor, batch.labels)
            out = await compute_in_step(self.ctx, barrier, client, batch, top_accumulate, *args)
            if out is not None:
                accepted.append((client, batch))
                outs.append(out)
        if not outs:
            return
        batches = accepted
        # b. and c. the averaging set gets the mean gradient, the rest their own.
        active = averaging_set(self.config.seed, round, step, len(batches), self.active_fraction)
        grads = await self.ctx.compute(split_average, [o.grad for o in outs], active)
        for (client, batch), out, grad in zip(batches, outs, grads):
            await reply_or_drop(barrier, client, CutReply(batch.ref, grad, out.loss, out.correct, out.count))
        # d. one step with the accelerated server learning rate.
        await self.ctx.compute(optimizer_step, self.optimizer)


def _validate(options: dict[str, Any]) -> None:
    if not 0.0 <= options["splitavg_active"] <= 1.0:
        raise ConfigError(
            f"option 'splitavg_active' of paradigm 'sglr' must be in [0, 1], got {options['splitavg_active']}"
        )
    if options["splitlr_alpha"] < 0:
        raise ConfigError(f"option 'splitlr_alpha' of paradigm 'sglr' must be >= 0, got {options['splitlr_alpha']}")


THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "every training and evaluation batch of every client"),
        Exposure(Seen.LABELS, "with every batch"),
        Exposure(Seen.CLIENT_WEIGHTS, "each client's own bottom after every pass (kept, never averaged)"),
    ),
    client=(
        Exposure(Seen.CUT_GRADIENTS, "per training batch: its own, or the mean over the step's averaging set"),
        Exposure(Seen.WEIGHTS, "its own bottom back, before every pass"),
    ),
    producer="it keeps every client's own bottom and sends it back before each pass",
    notes="a client in the averaging set receives the mean of other clients' cut gradients",
)


SPEC = register(
    ParadigmSpec(
        name="sglr",
        server=SGLRServer,
        client=BottomClient,
        exchange=top_exchange,
        threats=THREATS,
        aliases=("SGLR",),
        time_factor=1.2,
        options={"splitavg_active": (float, 0.5), "splitlr_alpha": (float, 0.5)},
        option_aliases={"SGLR_splitAvg_active": "splitavg_active", "SGLR_splitLR_alpha": "splitlr_alpha"},
        validate=_validate,
        deviations=DEVIATIONS,
        summary="lock-step psl; a random fraction of clients get the mean cut-layer gradient; server lr x N^alpha",
    )
)
