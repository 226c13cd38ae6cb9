"""SplitFed v2 (Thapa et al., AAAI 2022): the clients' bottoms are FedAvg'd every round, the server holds
ONE top that every client's batches step (SLPerf ``SplitFed2`` = parallel, ``SplitFed`` = sequential).

Who holds what: each client holds the bottom and its data; the server holds the one top and the loss;
labels go up with the activations.

Protocol, per round:
  1. Every client receives the global bottom (``set_weights``).
  2. The clients train their shards against the one top, in the order given by the option ``order``:
       * ``parallel`` (default; SLPerf ``SplitFed2``): all clients at once; the top takes one SGD step per
         client batch in the order the batches arrive;
       * ``sequential`` (SLPerf ``SplitFed``; also the alias ``splitfed_v2_sequential``): clients in turn,
         in client order, each from the same global bottom; the top carries on from one client to the next.
  3. The server collects every bottom and FedAvgs them, weighted by the samples each client trained on this
     round. The top is not averaged: there is only one.
  4. Evaluation runs through one client with the averaged bottom and the top.

With ``fed_server:`` the bottoms are averaged on the separate fed server instead (``kit.fed_rounds``): the clients
upload them there and fetch the average; this server declares who took part and never receives a bottom.

Optimiser: SGD with momentum and weight decay (``make_optimizer``) on both sides, whatever the order, so
that SplitFed differs from the other paradigms only in its protocol; ``optim: adam`` gives SLPerf's
sequential ``SplitFed`` optimiser (Adam, betas 0.9/0.999, eps 1e-8, no weight decay; choose a small ``lr``
with it, e.g. 0.001).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from slperf.common.config import ConfigError, RunConfig
from slperf.common.paradigms.base import (
    ClientData,
    ClientHandle,
    EvalResult,
    InferencePlan,
    ParadigmSpec,
    RoundResult,
    ServerContext,
)
from slperf.common.paradigms.kit.aggregate import aggregate, aggregation_rule
from slperf.common.paradigms.kit.bottom_client import BottomClient
from slperf.common.paradigms.kit.fed_rounds import evaluate_holding_average, fed_round
from slperf.common.paradigms.kit.optim import Optimizer
from slperf.common.paradigms.kit.rounds import gather_round, ring
from slperf.common.paradigms.kit.serving import evaluate_first_available, serve_in_arrival_order
from slperf.common.paradigms.kit.steps import clone_state, make_optimizer
from slperf.common.paradigms.kit.top_server import TopSegmentServer, top_exchange
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.threats import Exposure, Seen, ThreatModel
from slperf.common.protocol.types import PhaseSummary, State

ORDERS = ("parallel", "sequential")
OPTIMS = ("sgd", "adam")

DEVIATIONS = """\
* SLPerf's sequential SplitFed used Adam and its parallel SplitFed2 SGD; here both use SGD with momentum
  and weight decay unless the option optim: adam is given.
* FedAvg averages into fresh tensors weighted by sample counts; SLPerf overwrote the last uploader's weights
  before reading them and weighted by batch count.
* Evaluation runs once through one client (the averaged bottom is the same everywhere); SLPerf had every
  client evaluate the same model.
* Sequential order is client order every round, as SLPerf; Thapa et al.'s SFL-V2 draws a random order.
* A client that drops out is left out of that round's average (recorded in RoundResult.dropped); the
  steps it already gave the top are kept."""


def build_optimizer(params: Iterable[torch.Tensor], config: RunConfig) -> Optimizer:
    if config.options.get("optim", "sgd") == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    return make_optimizer(params, config)


class SplitFedV2Server(TopSegmentServer):
    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.top = self.split.segments[1]
        self.optimizer = build_optimizer(self.top.parameters(), config)
        self.bottom_state = clone_state(self.split.segments[0])
        self.order = config.options.get("order", "parallel")
        self.lock = asyncio.Lock()

    async def _client_pass(self, client: ClientHandle, round: int) -> tuple[PhaseSummary, State]:
        await client.set_weights("bottom", self.bottom_state, round)
        summary = await serve_in_arrival_order(self.ctx, self.lock, client, round, self.top, self.optimizer)
        bottom, _ = await client.get_weights("bottom", round, expected=self.bottom_state)
        return summary, bottom

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        run = gather_round if self.order == "parallel" else ring
        if self.ctx.fed_server is not None:
            fed, _ = await fed_round(
                self.ctx.fed_server,
                round,
                clients,
                self.bottom_state,
                run,
                lambda c: serve_in_arrival_order(self.ctx, self.lock, c, round, self.top, self.optimizer),
            )
            return fed.to_result()
        outcome = await run(clients, lambda c: self._client_pass(c, round))
        uploads = [(bottom, s.samples) for _, (s, bottom) in outcome.done]
        average = await self.ctx.compute(aggregate, uploads, aggregation_rule(self.config))
        if average is not None:
            self.bottom_state = average
        return outcome.to_result(lambda done: done[0])

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        if self.ctx.fed_server is not None:
            return await evaluate_holding_average(self.ctx, clients, round, self.top)
        return await evaluate_first_available(self.ctx, clients, round, self.bottom_state, self.top)

    def model_state(self) -> dict[str, State]:
        if self.ctx.fed_server is not None:  # the bottom is the fed server's and the clients'
            return {"top": clone_state(self.top)}
        return {"bottom": self.bottom_state, "top": clone_state(self.top)}

    def inference_plan(self, clients: Sequence[ClientHandle]) -> InferencePlan:
        if self.ctx.fed_server is not None:  # each client keeps the last average, which it fetches at the end
            return InferencePlan(server={"top": clone_state(self.top)}, clients={})
        return super().inference_plan(clients)

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


def _validate(options: dict[str, Any]) -> None:
    if options["order"] not in ORDERS:
        raise ConfigError(
            f"option 'order' of paradigm 'splitfed_v2' must be {' or '.join(ORDERS)}, got {options['order']!r}"
        )
    if options["optim"] not in OPTIMS:
        raise ConfigError(f"option 'optim' of paradigm 'splitfed_v2' must be sgd or adam, got {options['optim']!r}")


SEQUENTIAL = {"order": "sequential"}

THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "every training and evaluation batch of every client"),
        Exposure(Seen.LABELS, "with every batch"),
        Exposure(Seen.CLIENT_WEIGHTS, "every client's trained bottom after every round, before FedAvg"),
    ),
    client=(
        Exposure(Seen.CUT_GRADIENTS, "for each of its training batches (from the one shared top)"),
        Exposure(Seen.WEIGHTS, "the FedAvg of every client's bottom, at the start of every round"),
    ),
    producer="it FedAvgs the bottoms and sends the average that every client starts the round from",
)

FED_SERVER_THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "every training and evaluation batch of every client"),
        Exposure(Seen.LABELS, "with every batch"),
    ),
    client=(Exposure(Seen.CUT_GRADIENTS, "for each of its training batches (from the one shared top)"),),
    notes="fed_server: the bottoms go to the separate fed server, which FedAvgs them and sees every client's trained "
    "bottom after every round (a client fetches the average from it); the server never holds a bottom",
)


SPEC = register(
    ParadigmSpec(
        name="splitfed_v2",
        server=SplitFedV2Server,
        client=SplitFedV2Client,
        exchange=top_exchange,
        threats=THREATS,
        fed_server_threats=FED_SERVER_THREATS,
        aliases=("SplitFed2", "SplitFed", "splitfed_v2_sequential"),
        alias_options={"splitfed_v2_sequential": SEQUENTIAL, "SplitFed": SEQUENTIAL},
        options={"order": (str, "parallel"), "optim": (str, "sgd")},
        validate=_validate,
        summary="one shared top, clients in parallel (order: parallel|sequential; SplitFed and "
        "splitfed_v2_sequential imply sequential), FedAvg of the bottoms each round",
        deviations=DEVIATIONS,
        averages=True,
    )
)
