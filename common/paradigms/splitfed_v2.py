"""SplitFed v2 (Thapa et al., AAAI 2022): the clients' bottoms are FedAvg'd every round, the server holds
ONE top that every client's batches step (SLPerf ``SplitFed2`` = parallel, ``SplitFed`` = sequential).

Protocol, per round:
  1. Every client receives the global bottom (``set_weights``).
  2. The clients train their shards against the one top, in the order given by the option ``order``:
       * ``parallel`` (default; SLPerf ``SplitFed2``): all clients at once; the top takes one SGD step per
         client batch in the order the batches arrive (``psl.serve_in_arrival_order``);
       * ``sequential`` (SLPerf ``SplitFed``): clients in turn, in client order, each from the same global
         bottom; the top carries on from one client to the next.
  3. The server collects every bottom and FedAvgs them, weighted by the samples each client trained on this
     round (``slperf.common.aggregation.fedavg``). The top is not averaged: there is only one.
  4. Evaluation runs through one client with the averaged bottom and the top.

Names: ``splitfed_v2`` (alias ``SplitFed2``) takes ``order``; ``splitfed_v2_sequential`` (alias
``SplitFed``) is the same halves with ``order: sequential`` pinned (see the bottom).

Optimiser: SGD with momentum and weight decay (``steps.make_optimizer``) on both sides, whatever the order,
so that SplitFed differs from the other paradigms only in its protocol. SLPerf's sequential ``SplitFed``
used Adam (betas 0.9/0.999, eps 1e-8, no weight decay) on both sides and its parallel ``SplitFed2`` SGD; the
option ``optim: adam`` reproduces the former (choose a small ``lr`` with it, e.g. 0.001).

Deliberate deviations from SLPerf's code:
  * FedAvg averages into fresh tensors weighted by sample counts; SLPerf overwrote the last uploader's weights
    before reading them and weighted by batch count.
  * Evaluation runs once through one client (the averaged bottom is the same everywhere); SLPerf had every
    client evaluate the same model.
  * Sequential order is client order every round, as SLPerf; Thapa et al.'s SFL-V2 draws a random order.
  * A client that drops out is left out of that round's average (recorded in ``RoundResult.dropped``); the
    steps it already gave the top are kept.
"""
from __future__ import annotations

import asyncio
from typing import Any, Mapping, Sequence

import torch

from slperf.common.aggregation import fedavg
from slperf.common.config import ConfigError, RunConfig
from slperf.common.paradigms.base import ClientData, ClientGone, ClientHandle, EvalResult, ParadigmSpec, RoundResult, ServerContext, sort_outcomes
from slperf.common.protocol.types import PhaseSummary
from slperf.common.paradigms.bottom_client import BottomClient
from slperf.common.paradigms.psl import serve_in_arrival_order
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.steps import clone_state, make_optimizer
from slperf.common.paradigms.top_server import TopHolder, evaluate_first_available

ORDERS = ("parallel", "sequential")
OPTIMS = ("sgd", "adam")


def build_optimizer(params, config: RunConfig) -> torch.optim.Optimizer:
    if config.options.get("optim", "sgd") == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    return make_optimizer(params, config)


class SplitFedV2Server(TopHolder):
    def __init__(self, config, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        split = self.build_split()
        self.top = split.segments[1]
        self.optimizer = build_optimizer(self.top.parameters(), config)
        self.bottom_state = clone_state(split.segments[0])
        self.train_spec = self.activation_spec(split, config.batch_size)
        self.eval_spec = self.activation_spec(split, config.eval_batch_size)
        self.order = config.options.get("order", "parallel")
        self.lock = asyncio.Lock()

    async def _client_pass(self, client: ClientHandle, round: int) -> tuple[PhaseSummary, dict]:
        await client.set_weights("bottom", self.bottom_state, round)
        summary = await serve_in_arrival_order(self.ctx, self.lock, client, round, self.train_spec,
                                               self.top, self.optimizer)
        bottom, _ = await client.get_weights("bottom", round, expected=self.bottom_state)
        return summary, bottom

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        if self.order == "parallel":
            outcomes = await asyncio.gather(*(self._client_pass(c, round) for c in clients), return_exceptions=True)
        else:
            outcomes = []
            for client in clients:
                try:
                    outcomes.append(await self._client_pass(client, round))
                except ClientGone as gone:
                    outcomes.append(gone)
        result = RoundResult(participants=[])
        bottoms = []
        for client, (summary, bottom) in sort_outcomes(clients, outcomes, result):
            result.participants.append(client.client_id)
            result.per_client[client.client_id] = summary
            bottoms.append((bottom, summary.samples))
        if bottoms and sum(n for _, n in bottoms) > 0:
            self.bottom_state = await self.ctx.compute(fedavg, bottoms)
        return result

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        return await evaluate_first_available(self.ctx, clients, round, self.eval_spec,
                                              self.bottom_state, self.top)

    def model_state(self):
        return {"bottom": self.bottom_state, "top": clone_state(self.top)}

    def state_dict(self) -> dict[str, Any]:
        return {"top": self.top.state_dict(), "optimizer": self.optimizer.state_dict(), "bottom": self.bottom_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.top.load_state_dict(state["top"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.bottom_state = dict(state["bottom"])


class SplitFedV2Client(BottomClient):
    """The usual bottom client; only its optimiser follows ``optim``."""

    def __init__(self, config: RunConfig, index: int, num_clients: int, data: ClientData):
        super().__init__(config, index, num_clients, data)
        self.optimizer = build_optimizer(self.bottom.parameters(), config)


def _check(name: str, orders: tuple[str, ...]):
    def validate(options: dict[str, Any]) -> None:
        if options["order"] not in orders:
            raise ConfigError(f"option 'order' of paradigm '{name}' must be {' or '.join(orders)}, got {options['order']!r}")
        if options["optim"] not in OPTIMS:
            raise ConfigError(f"option 'optim' of paradigm '{name}' must be sgd or adam, got {options['optim']!r}")
    return validate


SPEC = register(ParadigmSpec(
    name="splitfed_v2", server=SplitFedV2Server, client=SplitFedV2Client, aliases=("SplitFed2",),
    options={"order": (str, "parallel"), "optim": (str, "sgd")}, validate=_check("splitfed_v2", ORDERS),
    summary="one shared top, clients in parallel (order: parallel|sequential), FedAvg of the bottoms each round",
))

# SLPerf's ``SplitFed`` is splitfed_v2 with ``order: sequential``. A registry alias cannot carry an option
# value, so it is a spec of its own (same halves) with the order pinned.
SEQUENTIAL_SPEC = register(ParadigmSpec(
    name="splitfed_v2_sequential", server=SplitFedV2Server, client=SplitFedV2Client, aliases=("SplitFed",),
    options={"order": (str, "sequential"), "optim": (str, "sgd")},
    validate=_check("splitfed_v2_sequential", ("sequential",)),
    summary="splitfed_v2 with order: sequential (clients in turn against the one top)",
))
