"""Time estimates start from the prior table and are refined by finished cells."""

from __future__ import annotations

import pytest
from bench_fakes import fake_rows

from slperf.bench.estimate import Estimator


def test_estimator_is_refined_by_finished_cells(tmp_path):
    suite, cells, rows = fake_rows(tmp_path)
    est = Estimator()
    cell = next(c for c in cells if c.paradigm == "splitfed_v1")
    prior, basis = est.estimate(cell)
    assert basis == "prior table" and prior > 0
    row = dict(next(r for r in rows if r["key"] == cell.key), train_seconds=100.0, total_seconds=130.0)
    est.observe(row)
    refined, basis = est.estimate(cell)
    assert "finished" in basis
    assert refined == pytest.approx(130.0, rel=0.01)  # same cell: overhead + rate reproduce what was seen
    other = next(c for c in cells if c.paradigm == "vanilla")
    assert "rescaled" in est.estimate(other)[1]
