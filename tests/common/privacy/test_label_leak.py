"""The label-inference scores on synthetic gradients built so that the answer is known: binary cross-entropy
gradients d loss / d h = (p - y) w of a logistic tail on a shared feature direction w, with a rare positive class
the model is unsure of (Li et al.'s setting): positives get large gradients along +w, negatives small along -w."""

from __future__ import annotations

import torch

from slperf.common.privacy.label_leak import cluster_accuracy, direction_scores, norm_scores
from slperf.common.privacy.metrics import roc_auc


def logistic_gradients(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.1).long()  # 10 % positives
    p = torch.where(y == 1, 0.1 + 0.2 * torch.rand(n, generator=g), 0.02 + 0.1 * torch.rand(n, generator=g))
    w = torch.randn(16, generator=g)
    noise = 0.01 * torch.randn(n, 16, generator=g)
    return (p - y.double()).unsqueeze(1) * w + noise, y


def test_norm_score_ranks_the_rare_class_first():
    grads, y = logistic_gradients()
    assert roc_auc(norm_scores(grads), y) > 0.99


def test_direction_score_separates_the_classes_from_one_known_positive():
    grads, y = logistic_gradients(seed=1)
    reference = grads[torch.nonzero(y).flatten()[0]]
    assert roc_auc(direction_scores(grads, reference), y) > 0.99
    # With a known negative as the reference, the positives are the least similar: AUC ~0.
    negative = grads[torch.nonzero(y == 0).flatten()[0]]
    assert roc_auc(direction_scores(grads, negative), y) < 0.01


def test_clustering_recovers_classes_whose_gradients_point_apart():
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(5, 32, generator=g)
    y = torch.randint(0, 5, (300,), generator=g)
    grads = centres[y] * (0.5 + torch.rand(300, 1, generator=g)) + 0.05 * torch.randn(300, 32, generator=g)
    assert cluster_accuracy(grads, y, 5) > 0.95
    # Gradients that carry no label information: about the share of the largest class.
    noise = torch.randn(300, 32, generator=g)
    assert cluster_accuracy(noise, y, 5) < 0.45
