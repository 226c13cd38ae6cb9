"""Gaussian noise on the cut activations (the Gaussian mechanism per sample): the client clips each training
sample's activation to L2 norm ``clip`` and adds N(0, (sigma * clip)^2) to every coordinate before sending it. A
sample's data reaches the server only through its clipped activation, so each step is a Gaussian mechanism of
noise multiplier ``sigma`` on the samples of that batch; ``accounting`` composes the steps with Opacus's RDP
accountant into the (epsilon, ``delta``) the run reports. The gradient the server returns flows back through the
clipping (the noise is additive), so the bottom learns what the noisy channel lets through. Cost: accuracy (the top
trains on noisy activations) and one norm per sample per step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from slperf.common.paradigms.threats import Seen
from slperf.common.privacy.defenses.base import Defense, check_keys, number
from slperf.common.privacy.defenses.registry import register


def clip_per_sample(activations: torch.Tensor, clip: float) -> torch.Tensor:
    """Each sample (row) scaled down to L2 norm at most ``clip``; differentiable, unchanged below the bound."""
    flat = activations.reshape(activations.shape[0], -1)
    norms = flat.norm(dim=1, keepdim=True)
    scale = (clip / norms.clamp(min=1e-12)).clamp(max=1.0)
    clipped: torch.Tensor = (flat * scale).reshape(activations.shape)
    return clipped


class ActivationNoise(Defense):
    name = "activation_noise"
    summary = "per-sample L2 clip of the cut activations + Gaussian noise sigma * clip (epsilon: Opacus RDP)"
    needs = frozenset({Seen.ACTIVATIONS})

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        check_keys(cls.name, raw, ("clip", "sigma", "delta"))
        return {
            "clip": number(cls.name, raw, "clip", default=1.0),
            "sigma": number(cls.name, raw, "sigma"),
            "delta": number(cls.name, raw, "delta", default=1e-5, high=1.0, high_open=True),
        }

    def public_part(self, activations: torch.Tensor) -> torch.Tensor:
        return clip_per_sample(activations, self.params["clip"])

    def release_activations(self, activations: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        clip: float = self.params["clip"]
        sigma: float = self.params["sigma"]
        clipped = clip_per_sample(activations, clip)
        noise = torch.randn(activations.shape, generator=generator, dtype=torch.float32)
        sent: torch.Tensor = clipped + (sigma * clip * noise).to(device=activations.device, dtype=clipped.dtype)
        return sent


register(ActivationNoise)
