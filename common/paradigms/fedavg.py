"""FedAvg (McMahan et al. 2017): the unsplit baseline (SLPerf ``fedavg``). Every client holds the whole
model; no activation, gradient or label ever crosses the wire, only weights.

Protocol, per round:
  1. Every client receives the global model (``set_weights("model", ...)``).
  2. Every client trains one local epoch over its shard, in parallel, with the same SGD as the split
     paradigms (``steps.make_optimizer``); its train instruction is answered by a PhaseDone only.
  3. The server collects every model (``get_weights``) and FedAvgs them, weighted by the samples each
     client trained on this round (``slperf.common.aggregation.fedavg``).
  4. Evaluation: one client receives the global model, evaluates it locally on the test set and reports
     the figures in its PhaseDone (samples, correct, and ``loss_sum`` = the SUM of per-sample losses); the
     server divides by the samples.

Deliberate deviations from SLPerf's code:
  * FedAvg averages into fresh tensors weighted by sample counts (SLPerf: into the last uploader's dict,
    overwriting it before reading it, weighted by batch count); integer buffers are handled.
  * One client evaluates the global model (SLPerf: every client evaluated the same model) and the rounds
    are a loop driven by the server (SLPerf's mutual recursion added stack frames every epoch).
  * SLPerf's server logged ``Dist:``, the mean squared difference between consecutive global models; it is
    kept as ``extra["model_shift"]`` of each round.
  * A client that drops out is left out of that round's average (``RoundResult.dropped``).
  * Each client's optimiser (momentum buffer) lives on across rounds, as in the split paradigms' clients.
"""
from __future__ import annotations

import asyncio
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from slperf.common.aggregation import fedavg
from slperf.common.config import RunConfig
from slperf.common.models import build_model
from slperf.common.paradigms.base import ActivationSpec, ClientData, ClientGone, ClientHandle, ClientLink, ClientParadigm, EvalResult, ParadigmSpec, RoundResult, ServerContext, ServerParadigm, sort_outcomes
from slperf.common.protocol.types import PhaseSummary, State
from slperf.common.paradigms.registry import register
from slperf.common.paradigms.steps import clone_state, make_optimizer


def model_shift(before: State, after: State) -> float:
    """Mean squared difference over all floating-point entries of two model states."""
    total, count = 0.0, 0
    for key, old in before.items():
        if old.is_floating_point():
            total += float(((after[key].double() - old.double()) ** 2).sum())
            count += old.numel()
    return total / count if count else 0.0


class FedAvgServer(ServerParadigm):
    def __init__(self, config, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.global_state = clone_state(build_model(config.model, input_shape, num_classes, config.seed))
        # Clients send no activations; a spec is still needed to open a pass, and admits nothing useful.
        self.spec = ActivationSpec(sample_shape=(0,), labels=False, num_classes=num_classes, max_batch=1)

    async def _pass(self, client: ClientHandle, stream) -> PhaseSummary:
        async for _ in stream:
            raise ClientGone(client.client_id, "sent activations, which fedavg never exchanges")
        assert stream.summary is not None
        return stream.summary

    async def _client_round(self, client: ClientHandle, round: int) -> tuple[PhaseSummary, State]:
        await client.set_weights("model", self.global_state, round)
        summary = await self._pass(client, client.train(round, self.spec))
        state, _ = await client.get_weights("model", round, expected=self.global_state)
        return summary, state

    async def train_round(self, round: int, clients: Sequence[ClientHandle]) -> RoundResult:
        outcomes = await asyncio.gather(*(self._client_round(c, round) for c in clients), return_exceptions=True)
        result = RoundResult(participants=[])
        states = []
        for client, (summary, state) in sort_outcomes(clients, outcomes, result):
            result.participants.append(client.client_id)
            result.per_client[client.client_id] = summary
            states.append((state, summary.samples))
        if states and sum(n for _, n in states) > 0:
            average = await self.ctx.compute(fedavg, states)
            result.extra["model_shift"] = await self.ctx.compute(model_shift, self.global_state, average)
            self.global_state = average
        return result

    async def evaluate(self, round: int, clients: Sequence[ClientHandle]) -> EvalResult:
        for client in clients:
            try:
                await client.set_weights("model", self.global_state, round)
                summary = await self._pass(client, client.evaluate(round, self.spec))
            except ClientGone:
                continue
            n = summary.samples
            return EvalResult(accuracy=summary.correct / n if n else 0.0, loss=summary.loss_sum / n if n else 0.0,
                              samples=n)
        raise ClientGone("*", "no client left to evaluate")

    def model_state(self) -> dict[str, State]:
        return {"model": self.global_state}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.global_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.global_state = dict(state["model"])


class FedAvgClient(ClientParadigm):
    """Holds the whole model; trains and evaluates locally, never touching the link."""

    def __init__(self, config: RunConfig, index: int, num_clients: int, data: ClientData):
        super().__init__(config, index, num_clients, data)
        self.model = build_model(config.model, data.input_shape, data.num_classes, config.seed)
        self.segments = {"model": self.model}
        self.optimizer = make_optimizer(self.model.parameters(), config)

    def _train(self, round: int) -> PhaseSummary:
        self.model.train()
        summary = PhaseSummary()
        for x, y in self.data.train.batches(round):
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            self.optimizer.step()
            summary.samples += int(y.shape[0])
            summary.steps += 1
            summary.loss_sum += float(loss.detach())
            summary.correct += int((logits.detach().argmax(1) == y).sum())
        return summary

    @torch.no_grad()
    def _evaluate(self) -> PhaseSummary:
        self.model.eval()
        summary = PhaseSummary()
        for x, y in self.data.test.batches(0, shuffle=False):
            logits = self.model(x)
            summary.samples += int(y.shape[0])
            summary.steps += 1
            summary.loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            summary.correct += int((logits.argmax(1) == y).sum())
        return summary

    # Local compute runs in a worker thread so the daemon's event loop keeps the session alive.
    async def train_epoch(self, link: ClientLink, round: int, options: Mapping[str, Any]) -> PhaseSummary:
        return await asyncio.to_thread(self._train, round)

    async def evaluate(self, link: ClientLink, round: int) -> PhaseSummary:
        return await asyncio.to_thread(self._evaluate)


SPEC = register(ParadigmSpec(
    name="fedavg", server=FedAvgServer, client=FedAvgClient, time_factor=0.5,
    summary="unsplit baseline: whole model on every client, local epochs, sample-weighted FedAvg each round",
))
