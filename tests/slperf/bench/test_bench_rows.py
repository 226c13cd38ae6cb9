"""Results rows: the figures derived from a runner's curve (final and best accuracy, rounds to target, per
client bytes, training time)."""

from __future__ import annotations

import pytest
from bench_fakes import fake_rows

from slperf.bench.rows import rounds_to_target


def test_rows_have_the_derived_figures(tmp_path):
    _, _, rows = fake_rows(tmp_path)
    row = next(r for r in rows if r["key"] == "splitfed_v1/mnist/homo/c2/s0")
    assert row["final_accuracy"] == pytest.approx(0.6) and row["best_accuracy"] == pytest.approx(0.6)
    assert row["rounds_to_target"] == 2  # 0.3, 0.6 against a target of 0.5
    assert row["bytes_up_per_client"] == pytest.approx(600_000 * 2) and row["train_seconds"] == pytest.approx(2.0)
    vanilla = next(r for r in rows if r["key"] == "vanilla/mnist/homo/c2/s0")
    assert vanilla["rounds_to_target"] is None  # 0.2, 0.4: never reached
    assert rounds_to_target([{"round": 1, "test_accuracy": 0.9}], 0.8) == 1
    assert rounds_to_target([{"round": 1, "test_accuracy": 0.9}], None) is None
