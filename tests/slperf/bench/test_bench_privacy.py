"""The benchmark's privacy figures (slperf.bench.privacy): a row's columns from what a runner measured, the report's
leakage table (a known figure in its column, the reconstruction grid linked), the privacy-utility plot (one point
per defense variant), and (slow) the 2-cell ``privacy_tiny`` suite run for real with non-empty privacy columns."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from bench_fakes import FakeRunner, suite_dict

from slperf.bench import privacy
from slperf.bench import report as bench_report
from slperf.bench.rows import curve_from_metrics, finalize_row
from slperf.bench.run import run_suite
from slperf.bench.suite import Cell, expand, parse_suite

PNG = b"\x89PNG\r\n\x1a\n"
VARIANTS = {
    "none": {},
    "nopeek-0.5": {"nopeek": {"alpha": 0.5}},
    "noise-1.0": {"activation_noise": {"clip": 1.0, "sigma": 1.0}},
}
# (paradigm, defense) -> final-round figures; accuracy drops as the defense strengthens
SSIM = {"none": 0.912, "nopeek-0.5": 0.55, "noise-1.0": 0.301}
ACCURACY = {"none": 0.9, "nopeek-0.5": 0.85, "noise-1.0": 0.7}


class PrivacyRunner(FakeRunner):
    """FakeRunner's figures plus made-up attack figures and a run folder holding two rounds' grids."""

    def __call__(self, cell: Cell, work_dir: Path) -> dict[str, Any]:
        measured = super().__call__(cell, work_dir)
        run_dir = work_dir / "runs" / cell.slug
        run_dir.mkdir(parents=True)
        for rnd in range(2):
            (run_dir / f"inversion_round{rnd}.png").write_bytes(PNG)
        defense = cell.defense or "none"
        figures = {"dcor": 0.99, "inversion_ssim": SSIM[defense], "inversion_psnr": 25.0, "inversion_mse": 0.0031}
        if cell.paradigm == "ushaped":
            figures |= {"label_direction_auc": 0.97, "label_inference_accuracy": 0.67, "label_norm_auc": 0.3}
        if defense == "noise-1.0":
            figures["activation_epsilon"] = 3.25
        measured["curve"] = [{**p, "test_accuracy": ACCURACY[defense]} for p in measured["curve"]]
        measured |= {"run_dir": str(run_dir), "privacy": {**figures, "per_client": {"c1": figures}}}
        return measured


@pytest.fixture
def rows(tmp_path):
    """Rows of vanilla and ushaped under three defense variants, with known figures."""
    matrix = {"paradigms": ["vanilla", "ushaped"], "datasets": ["mnist"], "partitions": ["homo"], "clients": [2]}
    matrix |= {"seeds": [0], "attacks": ["dcor"], "defenses": VARIANTS}
    cells = expand(parse_suite(suite_dict(matrix=matrix, centralized=False)))
    runner = PrivacyRunner()
    return [finalize_row(c, runner(c, tmp_path / "out"), target=0.5) for c in cells]


def _table(text: str, first_header: str) -> list[dict[str, str]]:
    """The markdown table whose header starts with ``| first_header |``, as dicts."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |") and "defense" in ln)
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    out = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        out.append(dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True)))
    return out


def test_a_row_carries_the_final_rounds_figures_its_variant_and_the_last_grid(rows):
    row = next(r for r in rows if r["key"] == "vanilla/mnist/homo/c2/s0/def-noise-1.0")
    assert row["defense"] == "noise-1.0" and row["attacks"] == "dcor" and row["attack_set"] is None
    assert row["inversion_ssim"] == 0.301 and row["activation_epsilon"] == 3.25 and "label_direction_auc" not in row
    assert row["inversion_grid"].endswith("inversion_round1.png")  # the final round's, not the first's


def test_the_leakage_table_puts_a_known_figure_in_its_column(rows, tmp_path):
    out = tmp_path / "out"
    report = bench_report.write_tables(rows, out)
    text = report.read_text()
    assert "Leakage (final round):" in text and "final round's figures" in text
    table = {(r["paradigm"], r["defense"]): r for r in _table(text, "paradigm")}
    assert set(table) == {(p, d) for p in ("vanilla", "ushaped") for d in VARIANTS}
    assert table["vanilla", "none"]["inversion SSIM"] == "0.912"
    assert table["vanilla", "noise-1.0"]["inversion SSIM"] == "0.301"
    eps = "ε (activations)"
    assert table["vanilla", "noise-1.0"][eps] == "3.25" and table["vanilla", "none"][eps] == "—"
    assert table["vanilla", "none"]["final acc (%)"] == "90.00"
    assert table["ushaped", "none"]["label leak AUC (direction)"] == "0.970"
    assert table["vanilla", "none"]["label leak AUC (direction)"] == "—"  # not an attack vanilla allows
    assert table["vanilla", "none"]["dCor"] == "0.990" and table["vanilla", "none"]["inversion MSE"] == "0.0031"
    link = table["vanilla", "none"]["reconstructions"]
    assert link == "[grid](runs/vanilla__mnist__homo__c2__s0__def-none/inversion_round1.png)"
    assert (out / link[len("[grid](") : -1]).is_file()
    # the main table keeps one line per paradigm and variant, not one per paradigm
    assert "| vanilla (nopeek-0.5) | 1 | 85.00" in text
    with open(out / "results.csv", newline="") as handle:
        csv_rows = {r["key"]: r for r in csv.DictReader(handle)}
    cell = csv_rows["ushaped/mnist/homo/c2/s0/def-nopeek-0.5"]
    assert cell["defense"] == "nopeek-0.5" and cell["inversion_ssim"] == "0.55" and cell["label_norm_auc"] == "0.3"


def test_the_privacy_utility_plot_has_one_point_per_variant(rows, tmp_path):
    points = privacy.utility_points(rows)
    assert list(points) == ["vanilla", "ushaped"]
    assert set(points["vanilla"]) == {"inversion_ssim", "dcor"}
    assert set(points["ushaped"]) == {"inversion_ssim", "dcor", "label_direction_auc", "label_inference_accuracy"}
    (series,) = points["vanilla"]["inversion_ssim"].values()
    assert [(p.variant, p.leakage, p.accuracy) for p in series] == [
        (v, SSIM[v], pytest.approx(100 * ACCURACY[v])) for v in VARIANTS
    ]
    paths = bench_report.write_plots(rows, tmp_path / "plots")
    utility = [p for p in paths if p.name.startswith("privacy_utility_")]
    assert [p.name for p in utility] == ["privacy_utility_vanilla.png", "privacy_utility_ushaped.png"]
    assert all(p.read_bytes()[:8] == PNG for p in utility)
    text = bench_report.report_markdown(rows, plots=paths)
    assert "## Privacy–utility" in text and "(plots/privacy_utility_ushaped.png)" in text


def test_rows_without_attacks_get_no_privacy_sections(tmp_path):
    cells = expand(parse_suite(suite_dict(centralized=False)))
    runner = FakeRunner()
    plain = [finalize_row(c, runner(c, tmp_path), target=0.5) for c in cells]
    assert not privacy.has_privacy(plain) and privacy.utility_points(plain) == {}
    text = bench_report.report_markdown(plain)
    assert "Leakage" not in text and "Privacy–utility" not in text
    assert privacy.write_plots(plain, tmp_path / "plots") == []


def test_the_curve_keeps_every_rounds_privacy_means():
    records = [
        {"round": 0, "test_accuracy": 0.5, "privacy": {"dcor": 0.99, "per_client": {"c1": {"dcor": 0.99}}}},
        {"round": 1, "test_accuracy": 0.6, "privacy": {"dcor": 0.8, "per_client": {"c1": {"dcor": 0.8}}}},
        {"round": 2, "test_accuracy": 0.7},
    ]
    curve = curve_from_metrics(records)
    assert [p.get("privacy") for p in curve] == [{"dcor": 0.99}, {"dcor": 0.8}, None]


@pytest.mark.slow
def test_the_tiny_privacy_suite_end_to_end(tmp_path):
    out = tmp_path / "out"
    outcome = run_suite("privacy_tiny", out, show_progress=False, echo=lambda _: None)
    assert not outcome.failed, [r.get("error") for r in outcome.rows]
    rows = {r["paradigm"]: r for r in outcome.rows}
    for paradigm in ("vanilla", "ushaped"):
        row = rows[paradigm]
        assert row["defense"] == "none" and 0 <= row["inversion_ssim"] <= 1 and 0 < row["dcor"] <= 1, row
        assert Path(row["inversion_grid"]).read_bytes()[:8] == PNG
    assert 0 <= rows["ushaped"]["label_direction_auc"] <= 1 and "label_direction_auc" not in rows["vanilla"]
    table = {r["paradigm"]: r for r in _table((out / "report.md").read_text(), "paradigm")}
    assert set(table) == {"vanilla", "ushaped"}
    for paradigm, line in table.items():
        assert line["defense"] == "none"
        for column in ("inversion SSIM", "inversion PSNR (dB)", "dCor"):
            assert line[column] != "—", (paradigm, column)
        assert (out / line["reconstructions"][len("[grid](") : -1]).is_file()
    assert table["ushaped"]["label inference acc"] != "—"
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"privacy_utility_vanilla.png", "privacy_utility_ushaped.png"} <= plots
