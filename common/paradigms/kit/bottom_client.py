"""The client half where the client holds the bottom of the model and its data and the server holds the
top and the loss (vanilla, SplitFed, PSL, SGLR, async): per training batch, activations and labels go up
and the gradient of the activations comes back down (or no gradient, when the server withholds it); per
evaluation batch, activations and labels go up and nothing comes back. The bottom computes on the daemon's
device (batches go there, activations come back to the host for the wire) under the run's precision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from slperf.common.config import RunConfig
from slperf.common.devices import cut_to_host
from slperf.common.models import build_split
from slperf.common.paradigms.base import ClientData, ClientLink, ClientParadigm
from slperf.common.paradigms.kit.optim import Optimizer
from slperf.common.paradigms.kit.steps import bottom_backward_step, make_optimizer
from slperf.common.privacy.defenses.client import ClientDefenses
from slperf.common.protocol.types import Phase, PhaseSummary, StepRef


class BottomClient(ClientParadigm):
    def __init__(self, config: RunConfig, index: int, num_clients: int, data: ClientData):
        super().__init__(config, index, num_clients, data)
        split = build_split(config.model, data.input_shape, data.num_classes, config.seed, [config.split_layer])
        self.bottom = self.placement.module(split.segments[0])
        self.segments = {"bottom": self.bottom}
        self.optimizer: Optimizer = make_optimizer(self.bottom.parameters(), config)
        self.defenses = ClientDefenses(config, data.train, data.num_classes)  # ``defenses:``; none: a no-op

    async def train_epoch(self, link: ClientLink, round: int, options: Mapping[str, Any]) -> PhaseSummary:
        self.bottom.train()
        summary = PhaseSummary()
        for step, (x, y) in enumerate(self.data.train.batches(round)):
            ref = StepRef(link.run_id, round, step, Phase.TRAIN)
            inputs = self.placement.inbound(x)
            with self.placement.autocast():
                acts = self.bottom(inputs)
            out = self.defenses.release(inputs, acts, y, round, step)  # what leaves the client, defended
            await link.send_cut_tensor(ref, cut_to_host(out.activations.detach()), labels=out.labels)
            reply = await link.recv_reply(ref)
            if reply.tensor is not None:  # paradigms may withhold the gradient (e.g. a frozen client)
                bottom_backward_step(out.activations, reply.tensor, self.optimizer, out.penalty)
            summary.add(int(y.shape[0]), reply.loss, reply.correct)
        return summary

    async def evaluate(self, link: ClientLink, round: int) -> PhaseSummary:
        self.bottom.eval()
        summary = PhaseSummary()
        for step, (x, y) in enumerate(self.data.test.batches(0, shuffle=False)):
            ref = StepRef(link.run_id, round, step, Phase.EVAL)
            with torch.no_grad(), self.placement.autocast():
                acts = self.defenses.release_eval(self.bottom(self.placement.inbound(x)))
            await link.send_cut_tensor(ref, cut_to_host(acts), labels=y)
            summary.add(int(y.shape[0]))
        return summary
