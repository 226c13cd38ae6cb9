"""SplitFed v1 (Thapa et al., AAAI 2022): parallel clients, one top copy per client on the server.

Who holds what: each client holds the bottom and its data; the server holds one copy of the top per client
and the loss; labels go up with the activations.

Protocol, per round:
  1. Every client receives the global bottom (``set_weights``) and trains its shard in parallel.
  2. Client k's batches step only top copy k. Server compute for the copies is serialised on the server's
     compute thread, the wire traffic overlaps.
  3. After the round the server collects every bottom and FedAvgs the bottoms and the top copies, weighted
     by the samples each client trained on this round; every top copy then continues from the average.
  4. Evaluation runs through one client with the averaged bottom and top.

With ``fed_server:`` the bottoms are averaged on the separate fed server instead (``kit.fed_rounds``): the clients
upload them there and fetch the average, this server declares who took part and FedAvgs only the top copies of the
clients whose bottoms were averaged, and it never receives a bottom.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from slperf.common.config import RunConfig
from slperf.common.paradigms.base import (
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
from slperf.common.paradigms.kit.rounds import gather_round
from slperf.common.paradigms.kit.serving import evaluate_first_available, serve_training
from slperf.common.paradigms.kit.steps import clone_state, load_state, make_optimizer
from slperf.common.paradigms.kit.top_server import TopSegmentServer, top_exchange
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.threats import Exposure, Seen, ThreatModel
from slperf.common.protocol.types import PhaseSummary, State

DEVIATIONS = """\
* SLPerf has no SplitFed v1 (both of its SplitFed variants share one top: see splitfed_v2).
* A client that drops out is left out of that round's averages; the round is recorded with who took part."""


class SplitFedV1Server(TopSegmentServer):
    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.global_top = self.split.segments[1]
        self.tops = [copy.deepcopy(self.global_top) for _ in range(config.clients)]
        self.optimizers = [make_optimizer(top.parameters(), config) for top in self.tops]
        self.bottom_state = clone_state(self.split.segments[0])

    async def _client_round(self, client: ClientHandle, round: int) -> tuple[PhaseSummary, State]:
        await client.set_weights("bottom", self.bottom_state, round)
        top, opt = self.tops[client.index], self.optimizers[client.index]
        summary = await serve_training(self.ctx, client, round, top, opt)
        bottom, _ = await client.get_weights("bottom", round, expected=self.bottom_state)
        return summary, bottom

    async def _fed_train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        assert self.ctx.fed_server is not None
        outcome, averaged = await fed_round(
            self.ctx.fed_server,
            round,
            clients,
            self.bottom_state,
            gather_round,
            lambda c: serve_training(self.ctx, c, round, self.tops[c.index], self.optimizers[c.index]),
        )
        # Only the tops of the clients whose bottoms were averaged: a bottom and a top must stay a pair.
        tops = [(clone_state(self.tops[c.index]), s.samples) for c, s in outcome.done if c.client_id in averaged]
        top_avg = await self.ctx.compute(aggregate, tops, aggregation_rule(self.config))
        if top_avg is not None:
            load_state(self.global_top, top_avg)
        for top in self.tops:
            load_state(top, clone_state(self.global_top))
        return outcome.to_result()

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        if self.ctx.fed_server is not None:
            return await self._fed_train_round(round, clients)
        outcome = await gather_round(clients, lambda c: self._client_round(c, round))
        bottoms = [(bottom, summary.samples) for _, (summary, bottom) in outcome.done]
        tops = [(clone_state(self.tops[c.index]), summary.samples) for c, (summary, _) in outcome.done]
        rule = aggregation_rule(self.config)
        bottom_avg = await self.ctx.compute(aggregate, bottoms, rule)
        top_avg = await self.ctx.compute(aggregate, tops, rule)
        # Both or neither (nobody trained, or an average overflowed): a bottom and a top must stay a pair.
        if bottom_avg is not None and top_avg is not None:
            self.bottom_state = bottom_avg
            load_state(self.global_top, top_avg)
        for top in self.tops:  # every copy continues from the global top, also one a refused client left behind
            load_state(top, clone_state(self.global_top))
        return outcome.to_result(lambda done: done[0])

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        if self.ctx.fed_server is not None:
            return await evaluate_holding_average(self.ctx, clients, round, self.global_top)
        return await evaluate_first_available(self.ctx, clients, round, self.bottom_state, self.global_top)

    def model_state(self) -> dict[str, State]:
        if self.ctx.fed_server is not None:  # the bottom is the fed server's and the clients'
            return {"top": clone_state(self.global_top)}
        return {"bottom": self.bottom_state, "top": clone_state(self.global_top)}

    def inference_plan(self, clients: Sequence[ClientHandle]) -> InferencePlan:
        if self.ctx.fed_server is not None:  # each client keeps the last average, which it fetches at the end
            return InferencePlan(server={"top": clone_state(self.global_top)}, clients={})
        return super().inference_plan(clients)

    def state_dict(self) -> dict[str, Any]:
        return {
            "top": self.global_top.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "bottom": self.bottom_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load_state(self.global_top, state["top"])
        for top, opt, opt_state in zip(self.tops, self.optimizers, state["optimizers"]):
            load_state(top, state["top"])
            opt.load_state_dict(opt_state)
        self.bottom_state = dict(state["bottom"])


THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "every training and evaluation batch of every client"),
        Exposure(Seen.LABELS, "with every batch"),
        Exposure(Seen.CLIENT_WEIGHTS, "every client's trained bottom after every round, before FedAvg"),
    ),
    client=(
        Exposure(Seen.CUT_GRADIENTS, "for each of its training batches (from its own top copy)"),
        Exposure(Seen.WEIGHTS, "the FedAvg of every client's bottom, at the start of every round"),
    ),
    producer="it FedAvgs the bottoms and sends the average that every client starts the round from",
)

FED_SERVER_THREATS = ThreatModel(
    server=(
        Exposure(Seen.ACTIVATIONS, "every training and evaluation batch of every client"),
        Exposure(Seen.LABELS, "with every batch"),
    ),
    client=(Exposure(Seen.CUT_GRADIENTS, "for each of its training batches (from its own top copy)"),),
    notes="fed_server: the bottoms go to the separate fed server, which FedAvgs them and sees every client's trained "
    "bottom after every round (a client fetches the average from it); the server never holds a bottom",
)


SPEC = register(
    ParadigmSpec(
        name="splitfed_v1",
        server=SplitFedV1Server,
        client=BottomClient,
        exchange=top_exchange,
        threats=THREATS,
        fed_server_threats=FED_SERVER_THREATS,
        aliases=("SplitFedV1", "splitfed1"),
        summary="parallel clients, one top copy per client, FedAvg of bottoms and tops each round",
        deviations=DEVIATIONS,
        averages=True,
    )
)
