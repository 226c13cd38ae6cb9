"""Gradient perturbation against label inference (Li et al., "Label Leakage and Protection in Two-party Split
Learning", ICLR 2022, the "max norm" heuristic), for U-shaped SL, where the labels stay with the client but the
gradient its tail computes goes to the server. Per batch, with g_max the largest per-sample L2 norm, the client adds
to each sample's gradient g_j Gaussian noise of per-coordinate variance (g_max^2 - |g_j|^2) / d (d: the
coordinates of one sample), so every sample's perturbed gradient has the same expected squared norm g_max^2 and the
norm no longer ranks the rare class first. The client's own tail steps on the true gradient; the server's middle
and, through it, the client's head step on the perturbed one. Cost: accuracy (noisier middle and head updates)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from slperf.common.paradigms.threats import Seen
from slperf.common.privacy.defenses.base import Defense, check_keys, choice
from slperf.common.privacy.defenses.registry import register

KINDS = ("max_norm",)


def max_norm_perturbation(gradient: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``gradient`` (samples as rows) plus the max-norm noise: E|g~_j|^2 = max_i |g_i|^2 for every j."""
    flat = gradient.detach().reshape(gradient.shape[0], -1).double()
    squared = flat.pow(2).sum(dim=1, keepdim=True)
    variance = (squared.max() - squared).clamp(min=0.0) / flat.shape[1]
    noise = torch.randn(flat.shape, generator=generator, dtype=torch.float64) * variance.sqrt().cpu()
    out = flat + noise.to(flat.device)
    return out.to(gradient.dtype).reshape(gradient.shape)


class GradPerturb(Defense):
    name = "grad_perturb"
    summary = "max-norm perturbation (Li et al. ICLR 2022) of the gradients the client's tail sends the server"
    needs = frozenset({Seen.TAIL_GRADIENTS})
    excluded = frozenset({Seen.LABELS})

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(cls.name, raw, ("kind",))
        return {"kind": choice(cls.name, raw, "kind", KINDS, "max_norm")}

    def release_gradient(self, gradient: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return max_norm_perturbation(gradient, generator)


register(GradPerturb)
