"""FedAvg (McMahan et al. 2017): the unsplit baseline (SLPerf ``fedavg``). Every client holds the whole
model; no activation, gradient or label ever crosses the wire, only weights.

Protocol, per round:
  1. Every client receives the global model (``set_weights("model", ...)``).
  2. Every client trains one local epoch over its shard, in parallel, with the same SGD as the split
     paradigms (``kit.steps.make_optimizer``); its train instruction is answered by a PhaseDone only.
  3. The server collects every model (``get_weights``) and FedAvgs them, weighted by the samples each
     client trained on this round.
  4. Evaluation: every client receives the global model, evaluates it locally on the (same) test set and
     reports the figures in its PhaseDone (samples, correct, and ``loss_sum`` = the SUM of per-sample losses);
     the server holds no data, so these are client-reported figures (``test_accuracy_source: clients``). Honest
     clients report the same figures of the same model, so the server takes the median report (by accuracy):
     one client forging a perfect score does not make the result, and every report that differs from the
     median is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from slperf.common.config import RunConfig
from slperf.common.data.registry import DATASETS
from slperf.common.models import build_model
from slperf.common.paradigms.base import (
    ClientData,
    ClientGone,
    ClientHandle,
    ClientLink,
    ClientParadigm,
    Disagreement,
    EvalResult,
    InferencePlan,
    InferenceUnsupported,
    NoClientLeft,
    ParadigmSpec,
    PhaseStream,
    RoundResult,
    ServerContext,
    ServerParadigm,
)
from slperf.common.paradigms.kit.aggregate import aggregate, aggregation_rule, model_shift
from slperf.common.paradigms.kit.cuts import model_layout
from slperf.common.paradigms.kit.rounds import gather_round
from slperf.common.paradigms.kit.steps import clone_state, make_optimizer
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.threats import Exposure, Seen, ThreatModel
from slperf.common.protocol.exchange import Exchange, SegmentLayout
from slperf.common.protocol.types import PhaseSummary, State

DEVIATIONS = """\
* FedAvg averages into fresh tensors weighted by sample counts (SLPerf: into the last uploader's dict,
  overwriting it before reading it, weighted by batch count); integer buffers are handled.
* Every client evaluates the global model, as in SLPerf, but the result is the median report (SLPerf: each
  client's own); the rounds are a loop driven by the server (SLPerf's mutual recursion added stack frames
  every epoch).
* SLPerf's server logged "Dist:", the mean squared difference between consecutive global models; it is
  kept as extra["model_shift"] of each round.
* A client that drops out is left out of that round's average (RoundResult.dropped).
* Each client's optimiser (momentum buffer) lives on across rounds, as in the split paradigms' clients."""


class FedAvgServer(ServerParadigm):
    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.global_state = clone_state(build_model(config.model, input_shape, num_classes, config.seed))

    async def _pass(self, client: ClientHandle, stream: PhaseStream) -> PhaseSummary:
        async for _ in stream:
            raise ClientGone(client.client_id, "sent activations, which fedavg never exchanges")
        assert stream.summary is not None
        return stream.summary

    async def _client_round(self, client: ClientHandle, round: int) -> tuple[PhaseSummary, State]:
        await client.set_weights("model", self.global_state, round)
        summary = await self._pass(client, client.train(round))
        state, _ = await client.get_weights("model", round, expected=self.global_state)
        return summary, state

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        outcome = await gather_round(clients, lambda c: self._client_round(c, round))
        result = outcome.to_result(lambda done: done[0])
        uploads = [(state, s.samples) for _, (s, state) in outcome.done]
        average = await self.ctx.compute(aggregate, uploads, aggregation_rule(self.config))
        if average is not None:
            result.extra["model_shift"] = await self.ctx.compute(model_shift, self.global_state, average)
            self.global_state = average
        return result

    async def _evaluate_through(self, client: ClientHandle, round: int) -> EvalResult:
        await client.set_weights("model", self.global_state, round)
        summary = await self._pass(client, client.evaluate(round))
        n = summary.samples
        return EvalResult(
            accuracy=summary.correct / n if n else 0.0, loss=summary.loss_sum / n if n else 0.0, samples=n
        )

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        outcome = await gather_round(clients, lambda c: self._evaluate_through(c, round))
        if not outcome.done:
            raise NoClientLeft("evaluate")
        result = median_report([(c.client_id, r) for c, r in outcome.done], round)
        result.misbehaved.update(outcome.misbehaved)
        return result

    def model_state(self) -> dict[str, State]:
        return {"model": self.global_state}

    def inference_plan(self, clients: Sequence[ClientHandle]) -> InferencePlan:
        raise InferenceUnsupported(
            "fedavg does not support split inference: every client holds the whole model and the server none of it"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.global_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.global_state = dict(state["model"])


def median_report(reports: Sequence[tuple[str, EvalResult]], round: int) -> EvalResult:
    """The report with the median accuracy (the lower middle one of an even count), marked client-reported, with
    a disagreement for every client whose figures differ from it."""
    ranked = sorted(reports, key=lambda item: (item[1].accuracy, item[0]))
    _, chosen = ranked[(len(ranked) - 1) // 2]
    result = EvalResult(chosen.accuracy, chosen.loss, chosen.samples, source="clients")
    for cid, report in reports:
        if (report.accuracy, report.samples) != (chosen.accuracy, chosen.samples):
            claimed = round_figure(report.accuracy * report.samples)
            result.disagreements.append(
                Disagreement(cid, round, "test_correct", claimed, round_figure(chosen.accuracy * chosen.samples))
            )
    result.extra["test_accuracy_per_client"] = {cid: report.accuracy for cid, report in reports}
    return result


def round_figure(value: float) -> int:
    return int(value + 0.5)


class FedAvgClient(ClientParadigm):
    """Holds the whole model; trains and evaluates locally, never touching the link."""

    def __init__(self, config: RunConfig, index: int, num_clients: int, data: ClientData):
        super().__init__(config, index, num_clients, data)
        self.model = self.placement.module(build_model(config.model, data.input_shape, data.num_classes, config.seed))
        self.segments = {"model": self.model}
        self.optimizer = make_optimizer(self.model.parameters(), config)

    def _train(self, round: int) -> PhaseSummary:
        self.model.train()
        summary = PhaseSummary()
        place = self.placement
        for x, y in self.data.train.batches(round):
            self.optimizer.zero_grad(set_to_none=True)
            y = place.inbound(y)
            with place.autocast():  # on this worker thread: autocast is thread-local
                logits = self.model(place.inbound(x))
                loss = F.cross_entropy(logits, y)
            loss.backward()
            self.optimizer.step()
            summary.add(int(y.shape[0]), float(loss.detach()), int((logits.detach().argmax(1) == y).sum()))
        return summary

    @torch.no_grad()
    def _evaluate(self) -> PhaseSummary:
        self.model.eval()
        summary = PhaseSummary()
        place = self.placement
        for x, y in self.data.test.batches(0, shuffle=False):
            y = place.inbound(y)
            with place.autocast():
                logits = self.model(place.inbound(x))
            summary.add(
                int(y.shape[0]), float(F.cross_entropy(logits, y, reduction="sum")), int((logits.argmax(1) == y).sum())
            )
        return summary

    # Local compute runs in a worker thread so the daemon's event loop keeps the session alive.
    async def train_epoch(self, link: ClientLink, round: int, options: Mapping[str, Any]) -> PhaseSummary:
        return await asyncio.to_thread(self._train, round)

    async def evaluate(self, link: ClientLink, round: int) -> PhaseSummary:
        return await asyncio.to_thread(self._evaluate)


def _exchange(config: RunConfig, client_index: int) -> Exchange:
    """Nothing crosses a cut: a pass is its instruction, the client's PhaseDone and the weights around it."""
    dataset = DATASETS[config.dataset]
    return Exchange(
        train=(),
        eval=(),
        num_classes=dataset.num_classes,
        max_batch=config.batch_size,
        max_eval_batch=config.eval_batch_size,
        segments=(
            SegmentLayout(
                "model", model_layout(config.model, tuple(dataset.input_shape), dataset.num_classes, config.seed)
            ),
        ),
    )


THREATS = ThreatModel(
    server=(Exposure(Seen.CLIENT_WEIGHTS, "every client's whole trained model after every round"),),
    client=(Exposure(Seen.WEIGHTS, "the FedAvg'd global model before every round and every evaluation"),),
    notes="no activation, gradient or label crosses; the weights' updates are what a curious server can attack",
)


SPEC = register(
    ParadigmSpec(
        name="fedavg",
        server=FedAvgServer,
        client=FedAvgClient,
        exchange=_exchange,
        threats=THREATS,
        time_factor=0.5,
        summary="unsplit baseline: whole model on every client, local epochs, sample-weighted FedAvg each round",
        deviations=DEVIATIONS,
        averages=True,
    )
)
