"""Client-reported figures bounded by what the server observed or assigned (``slperf.slserver.figures``)."""

from __future__ import annotations

from slperf.common.config_loader import config_from_mapping
from slperf.common.paradigms.kit.steps import MAX_PLAUSIBLE_LOSS
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


def test_a_finite_but_implausible_loss_is_refused_and_recorded():
    # a U-shaped client's loss is its tail's: 1.5e28 over 80 samples was accepted as the round's training loss
    claimed = PhaseSummary(samples=80, steps=5, loss_sum=1.5e28, correct=40)
    used, found = bounded_summary("c2", 0, Phase.TRAIN, claimed, PhaseSummary(samples=80, steps=5), 80, 16)
    assert used == PhaseSummary(samples=80, steps=5, loss_sum=0.0, correct=40)
    assert [(d.client, d.round, d.figure, d.claimed, d.counted) for d in found] == [("c2", 0, "loss_sum", 1.5e28, 0.0)]
    # the bound is per sample the server counted, not per sample claimed
    inflated = PhaseSummary(samples=10**9, steps=5, loss_sum=MAX_PLAUSIBLE_LOSS * 1000, correct=40)
    used, found = bounded_summary("c2", 0, Phase.EVAL, inflated, PhaseSummary(samples=80, steps=5), 80, 16)
    assert used.loss_sum == 0.0 and {d.figure for d in found} == {"test_samples", "test_loss_sum"}
    # at the bound itself the figure stands
    edge = PhaseSummary(samples=80, steps=5, loss_sum=MAX_PLAUSIBLE_LOSS * 80, correct=40)
    assert bounded_summary("c2", 0, Phase.TRAIN, edge, None, 80, 16) == (edge, [])
