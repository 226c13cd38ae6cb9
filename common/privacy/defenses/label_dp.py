"""Label differential privacy by randomized response (Warner 1965; k-ary as in Ghazi et al. 2021): the client
sends each training sample's true label with probability e^eps / (e^eps + k - 1) and each of the k - 1 others with
probability 1 / (e^eps + k - 1) (two classes: keep with e^eps / (1 + e^eps)). That is eps-label-DP exactly. Each
sample's answer is drawn once, from the client's own key, and sent again in every round, so repeating the label
reveals nothing more: the run's label epsilon stays ``epsilon``. Only where labels go to the server. Cost: accuracy
(the server's top fits flipped labels); training accuracy is reported against the labels sent, test accuracy
against the true ones (evaluation labels are sent as they are, to measure the model)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from slperf.common.paradigms.threats import Seen
from slperf.common.privacy.defenses.base import Defense, check_keys, number
from slperf.common.privacy.defenses.registry import register


def keep_probability(epsilon: float, classes: int) -> float:
    """P(the true label is sent) of k-ary randomized response at ``epsilon``."""
    return math.exp(epsilon) / (math.exp(epsilon) + classes - 1)


class RandomizedResponse:
    """Every shard position's answer, drawn once from ``generator``: kept, or replaced by one of the other classes
    uniformly (an offset 1..k-1 added modulo k)."""

    def __init__(self, epsilon: float, classes: int, samples: int, generator: torch.Generator):
        self.classes = classes
        self.keep = torch.rand(samples, generator=generator, dtype=torch.float64) < keep_probability(epsilon, classes)
        self.offset = torch.randint(1, max(classes, 2), (samples,), generator=generator)

    def __call__(self, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        keep = self.keep[positions].to(labels.device)
        flipped = (labels + self.offset[positions].to(labels.device)) % self.classes
        return torch.where(keep, labels, flipped)


class LabelDP(Defense):
    name = "label_dp"
    summary = "randomized response on the training labels sent to the server (epsilon-label-DP, exact)"
    needs = frozenset({Seen.LABELS})

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(cls.name, raw, ("epsilon",))
        return {"epsilon": number(cls.name, raw, "epsilon")}

    def bind(self, classes: int, samples: int, generator: torch.Generator) -> None:
        """Draws the answers of a shard of ``samples`` samples of ``classes`` classes (once per run)."""
        self.response = RandomizedResponse(self.params["epsilon"], classes, samples, generator)

    def release_labels(self, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.response(labels, positions)


register(LabelDP)
