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


def _row(paradigm: str, **extra):
    return {"paradigm": paradigm, "status": "ok", "dataset": "mnist", "partition": "homo", "clients": 3, **extra}


def test_a_suite_varying_the_link_gets_a_panel_per_profile_and_a_colour_per_paradigm():
    rows = [
        _row(p, network=net, compression=codec)
        for net in ("lan", "wan")
        for codec in ("none", "int8:channel")
        for p in ("vanilla", "psl")
    ] + [_row(bench_report.CENTRALIZED)]
    layout = bench_report.plot_layout(rows)
    assert list(layout) == ["lan", "wan"]
    for lines in layout.values():
        assert [(line.label, line.colour, line.style) for line in lines] == [
            ("vanilla [none]", 0, 0),
            ("psl [none]", 1, 0),
            ("vanilla [int8:channel]", 0, 1),
            ("psl [int8:channel]", 1, 1),
        ]
        assert all(len(line.rows) == 1 for line in lines)


def test_privacy_variants_get_a_panel_per_paradigm_and_a_colour_per_variant():
    rows = [_row(p, defense=d) for p in ("vanilla", "ushaped") for d in ("none", "nopeek-1.0")]
    layout = bench_report.plot_layout(rows)
    assert list(layout) == ["vanilla", "ushaped"]
    assert [(line.label, line.colour) for line in layout["ushaped"]] == [("none", 0), ("nopeek-1.0", 1)]


def test_a_plain_suite_is_one_panel_with_a_colour_per_series():
    rows = [_row("vanilla", seed=0), _row("vanilla", seed=1), _row("psl")]
    layout = bench_report.plot_layout(rows)
    assert list(layout) == [""]
    assert [(line.label, line.colour, len(line.rows)) for line in layout[""]] == [("vanilla", 0, 2), ("psl", 1, 1)]
