"""Client-reported figures bounded by what the server observed or assigned (``slperf.slserver.figures``)."""

from __future__ import annotations

from slperf.common.config_loader import config_from_mapping
from slperf.common.protocol.types import Phase, PhaseSummary
from slperf.slserver.figures import bounded_summary, eval_bound, shard_bound


def _config(**raw):
    return config_from_mapping({"dataset": "mnist", **raw})[0]


def test_shard_bounds_follow_the_pool_and_the_partition():
    assert shard_bound(_config(clients=4)) == 15000  # homo: the shards of 60 000 differ by at most one
    assert shard_bound(_config(clients=3, max_train_samples=240)) == 80
    assert shard_bound(_config(clients=3, partition_method="hetero")) == 60000  # any one shard could be the pool
    assert eval_bound(_config()) == 10000 and eval_bound(_config(max_test_samples=64)) == 64


def test_a_pass_with_cut_tensors_takes_the_servers_counts():
    claimed = PhaseSummary(samples=2**63, steps=10**18, loss_sum=float("nan"), correct=10**9)
    observed = PhaseSummary(samples=80, steps=5)
    used, found = bounded_summary("c3", 0, Phase.TRAIN, claimed, observed, 80, 16)
    assert (used.samples, used.steps, used.loss_sum, used.correct) == (80, 5, 0.0, 80)
    assert {(d.figure, d.claimed, d.counted) for d in found} == {
        ("samples", 2**63, 80),
        ("steps", 10**18, 5),
        ("correct", 10**9, 80),
        ("loss_sum", "nan", 0.0),
    }


def test_a_pass_without_cut_tensors_is_capped_at_the_shard_and_honest_figures_pass_unchanged():
    used, found = bounded_summary("c1", 1, Phase.EVAL, PhaseSummary(10**6, 10**6, -1.0, 10**6), None, 128, 64)
    assert (used.samples, used.steps, used.loss_sum, used.correct) == (128, 2, 0.0, 128)
    assert {d.figure for d in found} == {"test_samples", "test_steps", "test_loss_sum", "test_correct"}
    honest = PhaseSummary(samples=80, steps=5, loss_sum=9.5, correct=40)
    assert bounded_summary("c2", 1, Phase.TRAIN, honest, None, 80, 16) == (honest, [])
