"""Max-norm perturbation (Li et al.) on gradients built so that the norm attack is perfect: every perturbed
gradient has the batch's largest expected squared norm, and the norm attack of ``label_leak`` falls to chance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slperf.common.privacy.defenses.grad_perturb import GradPerturb, max_norm_perturbation
from slperf.common.privacy.label_leak import norm_scores
from slperf.common.privacy.metrics import roc_auc


def separable_gradients(n: int = 2000, dim: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Random directions; the rare positives (10%) have norm 4, the negatives norms in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(0)
    positive = torch.rand(n, generator=g) < 0.1
    directions = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    norms = torch.where(positive, torch.full((n,), 4.0), 0.5 + torch.rand(n, generator=g))
    return directions * norms.unsqueeze(1), positive


def test_max_norm_perturbation_sends_the_norm_attack_to_chance():
    gradients, positive = separable_gradients()
    assert roc_auc(norm_scores(gradients), positive) == 1.0
    perturbed = GradPerturb(GradPerturb.parse({})).release_gradient(gradients, torch.Generator().manual_seed(1))
    assert perturbed.shape == gradients.shape and perturbed.dtype == gradients.dtype
    auc = roc_auc(norm_scores(perturbed), positive)
    assert abs(auc - 0.5) < 0.05, auc


def test_every_perturbed_gradient_has_the_largest_expected_squared_norm():
    gradients, _ = separable_gradients()
    perturbed = max_norm_perturbation(gradients, torch.Generator().manual_seed(2))
    squared = perturbed.pow(2).sum(dim=1)
    assert abs(float(squared.mean()) / 16.0 - 1.0) < 0.01
    top = int(gradients.norm(dim=1).argmax())
    # the largest is left (nearly: the other positives' norms equal it up to rounding) alone
    assert torch.allclose(perturbed[top], gradients[top], atol=1e-3)
