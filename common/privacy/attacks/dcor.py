"""Distance correlation between each client's raw inputs and the cut activations the server received for them
(the quantity NoPeek minimises): a cheap leakage indicator for every paradigm whose server sees activations."""

from __future__ import annotations

import torch

from slperf.common.paradigms.threats import Seen
from slperf.common.privacy.attacks.base import Attack
from slperf.common.privacy.attacks.registry import register
from slperf.common.privacy.metrics import distance_correlation
from slperf.common.privacy.observations import GroundTruth, RoundLog


class DistanceCorrelation(Attack):
    name = "dcor"
    summary = "distance correlation of raw inputs and cut activations (each client's first 2 training batches)"
    needs = frozenset({Seen.ACTIVATIONS})
    activation_steps = 2

    def run(self, log: RoundLog, truth: GroundTruth) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for index, seen in sorted(log.clients.items()):
            steps = sorted(seen.activations)
            batches = truth.batches(index, log.round, steps)
            if not batches:
                continue
            x = torch.cat([batches[s][0].reshape(len(batches[s][0]), -1) for s in steps if s in batches])
            a = torch.cat([seen.activations[s].reshape(len(seen.activations[s]), -1) for s in steps if s in batches])
            out[seen.client_id] = {"dcor": distance_correlation(x, a)}
        return out


register(DistanceCorrelation)
