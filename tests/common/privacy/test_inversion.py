"""White-box inversion on a segment built so the answer is known, and where a mid-grey start is stuck."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slperf.common.privacy.inversion import InversionSettings, invert


def _threshold_segment() -> nn.Module:
    """relu(x - 0.6) per pixel: a pixel at mid-grey (0.5) is off, so its gradient is zero."""
    conv = nn.Conv2d(1, 1, kernel_size=1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.fill_(-0.6)
    return nn.Sequential(conv, nn.ReLU())


def _images() -> torch.Tensor:
    x = torch.zeros(4, 1, 12, 12)
    x[:, :, :, :6] = 0.9  # bright left half, black right half
    return x


def _fit(segment: nn.Module, guess: torch.Tensor, target: torch.Tensor) -> float:
    with torch.no_grad():
        return float((segment(guess) - target).pow(2).mean())


@pytest.mark.parametrize("restarts", [1, 2])
def test_inversion_keeps_the_segments_weights_and_the_input_range(restarts):
    segment = _threshold_segment()
    before = {k: v.clone() for k, v in segment.state_dict().items()}
    x = _images()
    guess = invert(segment, segment(x).detach(), (1, 12, 12), 0.0, 1.0, InversionSettings(steps=50, restarts=restarts))
    assert guess.shape == x.shape and float(guess.min()) >= 0.0 and float(guess.max()) <= 1.0
    assert all(torch.equal(before[k], v) for k, v in segment.state_dict().items())


def test_a_restart_from_noise_gets_past_a_start_where_every_unit_is_off():
    segment = _threshold_segment()
    x = _images()
    target = segment(x).detach()
    grey = invert(segment, target, (1, 12, 12), 0.0, 1.0, InversionSettings(steps=200, restarts=1))
    both = invert(segment, target, (1, 12, 12), 0.0, 1.0, InversionSettings(steps=200, restarts=2))
    # From mid-grey nothing moves: every pixel's unit is off, so the guess stays grey and the bright half is missed.
    assert abs(float(grey.mean()) - 0.5) < 0.02
    assert _fit(segment, both, target) < 0.5 * _fit(segment, grey, target)
    assert float((both - x).pow(2).mean()) < float((grey - x).pow(2).mean())


def test_no_start_is_refused():
    segment = _threshold_segment()
    with pytest.raises(ValueError, match="restarts=0"):
        invert(segment, torch.zeros(1, 1, 12, 12), (1, 12, 12), 0.0, 1.0, InversionSettings(restarts=0))
