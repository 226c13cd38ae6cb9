"""NoPeek (Vepakomma et al. 2020): the client adds ``alpha`` times the distance correlation of its raw inputs and
its cut activations to its loss, so training drives the activations towards carrying less of the inputs' geometry
(the figure the ``dcor`` attack reports). The activations themselves are sent unchanged; the cost is accuracy
(the term competes with the task) and the O(batch^2) distance matrices per step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from slperf.common.paradigms.threats import Seen
from slperf.common.privacy.defenses.base import Defense, check_keys, number
from slperf.common.privacy.defenses.registry import register


def _centred(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    squared = (flat.unsqueeze(1) - flat.unsqueeze(0)).pow(2).sum(-1)
    # clamp before the root: the diagonal's zero distances would give 0/0 gradients (clamp's gradient there is 0)
    d = squared.clamp(min=1e-12).sqrt()
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The (V-statistic) distance correlation of paired samples, differentiable: the quantity of
    ``slperf.common.privacy.metrics.distance_correlation``, as a tensor in the autograd graph of ``y``."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"distance correlation needs >= 2 paired samples, got {x.shape[0]} and {y.shape[0]}")
    a = _centred(x.detach().float())
    b = _centred(y.float())
    dcov = (a * b).mean().clamp(min=0.0)
    dvar = ((a * a).mean() * (b * b).mean()).sqrt().clamp(min=1e-12)
    return (dcov / dvar).clamp(min=1e-12).sqrt()


class NoPeek(Defense):
    name = "nopeek"
    summary = "client loss += alpha * distance correlation(inputs, cut activations)"
    needs = frozenset({Seen.ACTIVATIONS})

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(cls.name, raw, ("alpha",))
        return {"alpha": number(cls.name, raw, "alpha")}

    def penalty(self, inputs: torch.Tensor, activations: torch.Tensor) -> torch.Tensor | None:
        if inputs.shape[0] < 2:
            return None  # a batch of one has no correlation to hide
        alpha: float = self.params["alpha"]
        term: torch.Tensor = alpha * distance_correlation_loss(inputs, activations)
        return term


register(NoPeek)
