"""The results writers from fake rows: results.csv, report.md tables (centralized row in each), the plots."""

from __future__ import annotations

import csv

import pytest
from bench_fakes import fake_rows

from slperf.bench import report as bench_report

PNG = b"\x89PNG\r\n\x1a\n"


def test_csv_and_report(tmp_path):
    suite, cells, rows = fake_rows(tmp_path)
    report = bench_report.write_tables(rows, tmp_path, suite=suite, cells=cells)
    with open(tmp_path / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    assert list(table[0]) == bench_report.CSV_COLUMNS
    assert {r["key"] for r in table} == {r["key"] for r in rows}
    assert "curve" not in table[0]
    text = report.read_text()
    assert text.startswith("# SLPerf benchmark: t")
    assert text.count("## mnist, IID, 2 clients") == 1 and text.count("## mnist, Dirichlet α=0.5, 2 clients") == 1
    assert text.count("*centralized* (baseline)") == 2  # in every table
    assert "rounds to 50%" in text and "not reached" in text
    # splitfed_v1 over two seeds: 60 % final, MB per client, peak RSS
    line = next(ln for ln in text.splitlines() if ln.startswith("| splitfed_v1"))
    cells_ = [c.strip() for c in line.strip("|").split("|")]
    assert cells_[1] == "2" and cells_[2] == "60.00 ± 0.00" and cells_[4] == "2"
    assert cells_[5] == "1.20" and cells_[9] == "300"


def test_plots_from_fake_rows(tmp_path):
    _, _, rows = fake_rows(tmp_path)
    paths = bench_report.write_plots(rows, tmp_path / "plots")
    assert len(paths) == 2 * 3  # two groups, three plots each
    names = {p.name for p in paths}
    assert "mnist_homo_c2_accuracy_vs_round.png" in names
    assert "mnist_hetero-a0.5_c2_accuracy_vs_bytes.png" in names
    assert "mnist_homo_c2_accuracy_vs_time.png" in names
    for path in paths:
        assert path.read_bytes()[:8] == PNG
    xs, ys = bench_report.mean_curve([r for r in rows if r["key"].startswith("splitfed_v1/mnist/homo")], "bytes")
    assert xs == [1.0, 2.0] and ys == pytest.approx([30.0, 60.0])
