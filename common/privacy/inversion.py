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
    # Starting points, each sample's reconstruction the one whose activations match best. A single mid-grey start
    # can sit where the segment's ReLUs are all off (zero gradient: the guess never moves, and a defence such as
    # NoPeek looks stronger than it is); a uniform-noise start gets gradients there.
    restarts: int = 2


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
    if settings.restarts < 1:
        raise ValueError(f"an inversion needs at least one start, got restarts={settings.restarts}")
    segment = segment.eval()
    for p in segment.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    target = target.detach().float()
    shape = (target.shape[0], *input_shape)
    best: torch.Tensor | None = None
    best_fit = torch.full((target.shape[0],), float("inf"))
    for start in range(settings.restarts):
        if start == 0:  # mid-grey with a little noise
            x = low + (high - low) * 0.5 + 0.01 * torch.randn(shape, generator=generator)
        else:  # uniform over the input range
            x = low + (high - low) * torch.rand(shape, generator=generator)
        x = _descend(segment, target, x, low, high, settings)
        with torch.no_grad():  # the attacker's own yardstick: how well the guess's activations match, per sample
            fit = (segment(x) - target).pow(2).flatten(1).mean(1)
        if best is None:
            best, best_fit = x, fit
        else:
            better = fit < best_fit
            best[better] = x[better]
            best_fit = torch.where(better, fit, best_fit)
    assert best is not None
    return best


def _descend(
    segment: nn.Module, target: torch.Tensor, x: torch.Tensor, low: float, high: float, settings: InversionSettings
) -> torch.Tensor:
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=settings.lr)
    scale = float(target.pow(2).mean().clamp(min=1e-12))
    for _ in range(settings.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = (segment(x) - target).pow(2).mean() / scale + settings.tv_weight * total_variation(x)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(low, high)
    return x.detach()
