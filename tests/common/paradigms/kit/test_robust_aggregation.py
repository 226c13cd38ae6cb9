"""Robust aggregation (``aggregation: median | trimmed_mean``) against one poisoned upload, and the finiteness
check every aggregate goes through."""

from __future__ import annotations

import pytest
import torch

from slperf.common.paradigms.kit.aggregate import (
    Aggregation,
    AggregationRule,
    aggregate,
    coordinate_median,
    non_finite,
    trimmed_mean,
)

HONEST = [{"w": torch.tensor([1.0, 2.0, 3.0]), "n": torch.tensor(4)} for _ in range(3)]
POISONED = {"w": torch.tensor([1e30, -1e30, 5e29]), "n": torch.tensor(4)}


def test_one_poisoned_upload_moves_fedavg_but_not_the_median_nor_the_trimmed_mean():
    uploads = [(s, 10) for s in HONEST] + [(POISONED, 10)]
    wrecked = aggregate(uploads)
    assert wrecked is not None and float(wrecked["w"].abs().max()) > 1e28
    for rule in (AggregationRule(Aggregation.MEDIAN), AggregationRule(Aggregation.TRIMMED_MEAN, 0.25)):
        out = aggregate(uploads, rule)
        assert out is not None
        torch.testing.assert_close(out["w"], HONEST[0]["w"])
        assert out["n"].dtype == torch.int64 and out["n"].item() == 4


def test_the_robust_rules_ignore_claimed_weights():
    uploads = [(s, 1) for s in HONEST] + [(POISONED, 2**62)]
    out = aggregate(uploads, AggregationRule(Aggregation.MEDIAN))
    assert out is not None and torch.equal(out["w"], HONEST[0]["w"])


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    states = [{"w": torch.tensor([v])} for v in (0.0, 1.0, 3.0, 100.0)]
    assert coordinate_median(states)["w"].item() == 2.0


def test_trimmed_mean_drops_the_fraction_at_each_end_and_falls_back_to_the_median():
    states = [{"w": torch.tensor([v])} for v in (-50.0, 1.0, 2.0, 3.0, 50.0)]
    assert trimmed_mean(states, 0.2)["w"].item() == 2.0  # drops -50 and 50
    assert trimmed_mean(states, 0.0)["w"].item() == pytest.approx(1.2)  # the plain mean
    with pytest.raises(ValueError):
        trimmed_mean(states, 0.5)


def test_a_non_finite_aggregate_is_refused_so_the_old_state_stays():
    # float64 accumulation: the mean of float32's largest values stays finite
    huge = [({"w": torch.tensor([3e38])}, 1), ({"w": torch.tensor([3e38])}, 1)]
    assert aggregate(huge, AggregationRule(Aggregation.TRIMMED_MEAN, 0.0)) is not None
    assert aggregate([({"w": torch.tensor([float("inf")])}, 1), ({"w": torch.tensor([1.0])}, 1)]) is None
    assert non_finite({"w": torch.tensor([float("inf")]), "ok": torch.zeros(1), "n": torch.tensor(1)}) == ["w"]
