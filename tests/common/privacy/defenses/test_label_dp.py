"""Randomized response keeps a label at the rate e^eps / (e^eps + k - 1) (two classes: e^eps / (1 + e^eps)) within a
binomial bound, spreads the others uniformly, and answers a sample the same way every time it is sent."""

from __future__ import annotations

import math

import torch

from slperf.common.privacy.defenses.label_dp import LabelDP, RandomizedResponse, keep_probability

N = 40_000


def _within_binomial(count: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p))


def test_binary_randomized_response_flips_at_the_predicted_rate():
    epsilon = 1.0
    assert math.isclose(keep_probability(epsilon, 2), math.exp(epsilon) / (1 + math.exp(epsilon)))
    rr = RandomizedResponse(epsilon, 2, N, torch.Generator().manual_seed(0))
    labels = torch.randint(0, 2, (N,), generator=torch.Generator().manual_seed(1))
    sent = rr(labels, torch.arange(N))
    kept = int((sent == labels).sum())
    assert _within_binomial(kept, N, keep_probability(epsilon, 2)), kept
    assert set(sent.tolist()) <= {0, 1}


def test_k_ary_randomized_response_keeps_at_the_predicted_rate_and_spreads_the_rest_uniformly():
    epsilon, k = 2.0, 10
    rr = RandomizedResponse(epsilon, k, N, torch.Generator().manual_seed(2))
    labels = torch.full((N,), 3)
    sent = rr(labels, torch.arange(N))
    p_keep = keep_probability(epsilon, k)
    assert _within_binomial(int((sent == 3).sum()), N, p_keep)
    for other in set(range(k)) - {3}:
        assert _within_binomial(int((sent == other).sum()), N, (1 - p_keep) / (k - 1)), other


def test_each_sample_is_answered_once_for_the_whole_run():
    defense = LabelDP(LabelDP.parse({"epsilon": 0.5}))
    defense.bind(10, 500, torch.Generator().manual_seed(3))
    labels = torch.randint(0, 10, (500,))
    positions = torch.randperm(500)
    first = defense.release_labels(labels[positions], positions)
    again = defense.release_labels(labels[positions], positions)
    assert torch.equal(first, again)
    assert not torch.equal(first, labels[positions])  # eps 0.5 over 10 classes keeps about 15%
