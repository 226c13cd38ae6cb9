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


class _Truth:
    """Ground truth of one client's training batches (labels only matter here)."""

    def __init__(self, labels: dict[int, torch.Tensor]):
        self.labels = labels

    def batches(self, index, round, steps):
        return {s: (torch.zeros(len(self.labels[s]), 1), self.labels[s]) for s in steps if s in self.labels}


def test_the_attack_on_a_binary_task_asks_about_the_rare_class_and_leaks_it():
    from slperf.common.config import RunConfig
    from slperf.common.privacy.attacks.base import AttackContext
    from slperf.common.privacy.attacks.label_leak import LabelLeak, positive_class
    from slperf.common.privacy.observations import ClientRound, RoundLog

    grads, y = logistic_gradients(n=256, seed=3)
    for flip in (False, True):  # the rare class labelled 1, then labelled 0: the scores follow the rarity
        labels = 1 - y if flip else y
        assert positive_class(labels, 2) == (0 if flip else 1)
        seen = ClientRound("c1", 0)
        truth = {}
        for step in range(4):
            seen.tail_gradients[step] = grads[64 * step : 64 * (step + 1)]
            truth[step] = labels[64 * step : 64 * (step + 1)]
        log = RoundLog(0, {0: seen})
        figures = LabelLeak(AttackContext(RunConfig(), (16,), 2, None)).run(log, _Truth(truth))["c1"]
        assert figures["label_norm_auc"] > 0.99 and figures["label_direction_auc"] > 0.99, figures
        assert figures["label_inference_accuracy"] > 0.95, figures
    assert positive_class(torch.tensor([3, 3, 0]), 10) == 0  # multi-class: "is it class 0?"
