"""White-box model inversion (He, Zhang and Lee, ACSAC 2019, "rMLE"): given a client segment's weights and the
activations it produced, find inputs that the segment maps to those activations, with a total-variation prior
that favours natural (piecewise smooth) images. What an honest-but-curious server can do wherever it holds the
producing weights (docs/threat_model.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InversionSettings:
    steps: int = 600
    lr: float = 0.05
    tv_weight: float = 0.05  # relative to the activation-matching loss (a mean over activation values)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV) of an image batch [N, C, H, W]."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def invert(
    segment: nn.Module,
    target: torch.Tensor,
    input_shape: tuple[int, ...],
    low: float,
    high: float,
    settings: InversionSettings = InversionSettings(),
    seed: int = 0,
) -> torch.Tensor:
    """Inputs (in the segment's input space, clamped to [low, high]) whose activations match ``target``; the
    segment is put in eval mode and its weights left untouched."""
    segment = segment.eval()
    for p in segment.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    x = low + (high - low) * 0.5 + 0.01 * torch.randn((target.shape[0], *input_shape), generator=generator)
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=settings.lr)
    target = target.detach().float()
    scale = float(target.pow(2).mean().clamp(min=1e-12))
    for _ in range(settings.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = (segment(x) - target).pow(2).mean() / scale + settings.tv_weight * total_variation(x)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(low, high)
    return x.detach()
