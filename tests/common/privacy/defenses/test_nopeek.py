"""NoPeek's term is the distance correlation the ``dcor`` attack reports, differentiable, and optimising it drives
the correlation of inputs and activations down."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slperf.common.privacy.defenses.nopeek import NoPeek, distance_correlation_loss
from slperf.common.privacy.metrics import distance_correlation


def test_the_term_is_the_attacks_distance_correlation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 10, generator=g)
    y = torch.tanh(x @ torch.randn(10, 6, generator=g)) + 0.1 * torch.randn(48, 6, generator=g)
    assert float(distance_correlation_loss(x, y)) == pytest.approx(distance_correlation(x, y), abs=1e-4)


def test_optimising_the_term_drives_the_distance_correlation_down():
    torch.manual_seed(0)
    x = torch.randn(64, 12)
    bottom = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8))
    before = distance_correlation(x, bottom(x))
    defense = NoPeek(NoPeek.parse({"alpha": 1.0}))
    optimizer = torch.optim.SGD(bottom.parameters(), lr=0.5)
    for _ in range(150):
        optimizer.zero_grad()
        penalty = defense.penalty(x, bottom(x))
        assert penalty is not None
        penalty.backward()
        assert all(torch.isfinite(p.grad).all() for p in bottom.parameters())
        optimizer.step()
    after = distance_correlation(x, bottom(x))
    assert before > 0.8
    assert after < before - 0.3, (before, after)


def test_the_term_scales_with_alpha_and_a_batch_of_one_has_none():
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    one = NoPeek({"alpha": 1.0}).penalty(x, y)
    three = NoPeek({"alpha": 3.0}).penalty(x, y)
    assert one is not None and three is not None
    assert float(three) == pytest.approx(3 * float(one))
    assert NoPeek({"alpha": 1.0}).penalty(x[:1], y[:1]) is None
