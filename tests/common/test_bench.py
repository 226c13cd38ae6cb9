"""The benchmark suite: parsing and matrix expansion, resumability (with a fake runner), the results writers
and plots from fake rows, the centralized baseline, and (slow) a two-cell micro-suite run for real."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from slperf.common import bench, bench_report
from slperf.common.bench import (
    CENTRALIZED, Estimator, Partition, ResultsStore, SuiteError, expand, finalize_row, parse_partition,
    parse_suite, rounds_to_target, run_suite,
)
from slperf.common.bench_procs import peak_rss_bytes, read_status_kib

PNG = b"\x89PNG\r\n\x1a\n"


def suite_dict(**overrides):
    raw = {
        "name": "t",
        "base": {"model": "lenet", "epochs": 2, "batch_size": 32, "lr": 0.05, "max_train_samples": 300,
                 "max_test_samples": 100},
        "matrix": {"paradigms": ["vanilla", "splitfed_v1"], "datasets": ["mnist"],
                   "partitions": ["homo", "hetero:0.5"], "clients": [2, 3], "seeds": [0, 1]},
        "target_accuracy": 0.5,
    }
    raw.update(overrides)
    return raw


# ---- parsing and expansion ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("homo", Partition("homo")),
    ("iid", Partition("homo")),
    ("hetero:0.5", Partition("hetero", alpha=0.5)),
    ("dirichlet:2", Partition("hetero", alpha=2.0)),
    ("hetero", Partition("hetero", alpha=0.5)),
    ("label_skew:2", Partition("label_skew", classes=2)),
    ({"method": "label_skew", "classes": 3}, Partition("label_skew", classes=3)),
    ({"method": "hetero", "alpha": 2}, Partition("hetero", alpha=2.0)),
])
def test_partition_specs(spec, expected):
    assert parse_partition(spec) == expected


def test_partition_labels_and_config_keys():
    assert Partition("hetero", alpha=0.5).label == "hetero-a0.5"
    assert Partition("label_skew", classes=2).label == "label_skew-k2"
    assert Partition("homo").label == "homo"
    assert Partition("hetero", alpha=2.0).config_keys() == {"partition_method": "hetero", "partition_alpha": 2.0}
    assert Partition("label_skew", classes=2).config_keys() == {"partition_method": "label_skew",
                                                                "class_number_per_client": 2}


@pytest.mark.parametrize("spec, fragment", [
    ("hetero:abc", "not a number"),
    ({"method": "hetero", "alpha": -1}, "alpha"),
    ({"method": "homo", "alpha": 0.5}, "hetero only"),
    ({"alpha": 0.5}, "method"),
    ({"method": "hetero", "beta": 1}, "unknown keys"),
    (3, "string or a mapping"),
])
def test_bad_partitions_are_named(spec, fragment):
    with pytest.raises(SuiteError, match=fragment):
        parse_partition(spec)


def test_matrix_expansion_counts_keys_and_configs():
    suite = parse_suite(suite_dict())
    cells = expand(suite)
    central = [c for c in cells if c.paradigm == CENTRALIZED]
    runs = [c for c in cells if c.paradigm != CENTRALIZED]
    assert len(central) == 2  # one per dataset and seed
    assert len(runs) == 2 * 1 * 2 * 2 * 2
    assert cells[: len(central)] == central  # baselines first
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys)
    assert "splitfed_v1/mnist/hetero-a0.5/c3/s1" in keys
    assert "centralized/mnist/all/s0" in keys
    cell = next(c for c in runs if c.key == "splitfed_v1/mnist/hetero-a0.5/c3/s1")
    assert cell.config["partition_method"] == "hetero" and cell.config["partition_alpha"] == 0.5
    assert cell.config["clients"] == 3 and cell.config["seed"] == 1 and cell.config["epochs"] == 2
    # Paradigms innermost: the two paradigms of one group are neighbours.
    i = keys.index("vanilla/mnist/homo/c2/s0")
    assert keys[i + 1] == "splitfed_v1/mnist/homo/c2/s0"  # in the order the suite lists them
    # Keys and config hashes are stable: a second expansion gives the same.
    again = expand(parse_suite(suite_dict()))
    assert [(c.key, c.config_hash) for c in again] == [(c.key, c.config_hash) for c in cells]


def test_all_paradigms_come_from_the_registry():
    from slperf.common.paradigms import registry

    suite = parse_suite(suite_dict(matrix={"paradigms": "all", "datasets": ["mnist"], "partitions": ["homo"],
                                           "clients": [3], "seeds": [0]}))
    assert suite.paradigms == [s.name for s in registry.all_specs()]
    assert {"vanilla", "splitfed_v1"} <= set(suite.paradigms)


def test_aliases_exclusions_and_override_precedence():
    raw = suite_dict(
        matrix={"paradigms": ["SplitFedV1", "vanilla"], "datasets": ["mnist"], "partitions": ["homo", "hetero:2"],
                "clients": [3], "seeds": [0]},
        exclude=[{"paradigm": "vanilla", "partition": "hetero"}],
        overrides={"datasets": {"mnist": {"epochs": 4, "lr": 0.1}}, "paradigms": {"vanilla": {"lr": 0.2}}},
        centralized=False,
    )
    cells = expand(parse_suite(raw))
    keys = [c.key for c in cells]
    assert keys == ["splitfed_v1/mnist/homo/c3/s0", "vanilla/mnist/homo/c3/s0", "splitfed_v1/mnist/hetero-a2/c3/s0"]
    by_key = {c.key: c for c in cells}
    assert by_key["splitfed_v1/mnist/homo/c3/s0"].config["epochs"] == 4  # dataset override over base
    assert by_key["splitfed_v1/mnist/homo/c3/s0"].config["lr"] == 0.1
    assert by_key["vanilla/mnist/homo/c3/s0"].config["lr"] == 0.2  # paradigm override last


@pytest.mark.parametrize("change, fragment", [
    ({"base": {"epochs": 2, "partition_alfa": 0.5}}, "partition_alfa"),
    ({"base": {"paradigm": "vanilla"}}, "set by the matrix"),
    ({"matrix": {"paradigms": ["nosuch"], "datasets": ["mnist"]}}, "nosuch"),
    ({"matrix": {"paradigms": ["vanilla"], "clients": [0]}}, "clients"),
    ({"matrix": {"paradigms": ["vanilla"], "colour": ["red"]}}, "colour"),
    ({"surprise": 1}, "surprise"),
    ({"target_accuracy": 1.5}, "target_accuracy"),
    ({"exclude": [{"shape": "round"}]}, "shape"),
])
def test_suite_errors_name_the_key(change, fragment):
    with pytest.raises(SuiteError, match=fragment):
        expand(parse_suite(suite_dict(**change)))


def test_suite_names_resolve_to_the_shipped_files():
    for name in ("quick", "paper"):
        path = bench.resolve_suite_path(name)
        assert path.name == f"{name}.yaml"
        suite = bench.load_suite(name)
        assert suite.name == name
    quick = bench.load_suite("quick")
    assert quick.datasets == ["mnist"] and quick.clients == [3]
    assert [p.label for p in quick.partitions] == ["homo", "hetero-a0.5"]
    assert quick.base["epochs"] == 2 and quick.base["max_train_samples"]
    cells = expand(quick)
    runnable = [p for p in bench.registered_paradigms() if p != "vertical"]  # excluded: tabular data only
    assert len(cells) == 1 + 2 * len(runnable)
    paper = bench.load_suite("paper")
    assert paper.datasets == ["mnist", "fashionmnist", "cifar10", "adult"]
    assert [p.label for p in paper.partitions] == ["homo", "hetero-a0.5", "hetero-a2", "label_skew-k2"]
    assert paper.clients == [3, 10] and paper.seeds == [0, 1, 2]
    assert paper.base["batch_size"] == 128 and paper.base["lr"] == 0.01 and paper.base["momentum"] == 0.9
    with pytest.raises(SuiteError, match="no suite named"):
        bench.resolve_suite_path("no_such_suite")


def test_preflight_names_unregistered_models():
    raw = suite_dict(matrix={"paradigms": ["vanilla"], "datasets": ["mnist"], "partitions": ["homo"],
                             "clients": [2], "seeds": [0]}, overrides={"paradigms": {"vanilla": {"model": "nosuchmodel"}}})
    notes = bench.preflight(expand(parse_suite(raw)))
    assert len(notes) == 1 and "nosuchmodel" in notes[0]
    assert bench.preflight(expand(small_suite())) == []


# ---- resumability with a fake runner ------------------------------------------------------------------------

class FakeRunner:
    def __init__(self, fail: set[str] | None = None):
        self.calls: list[str] = []
        self.fail = fail or set()

    def __call__(self, cell, work_dir):
        self.calls.append(cell.key)
        if cell.key in self.fail:
            raise RuntimeError("boom")
        rounds = cell.epochs
        good = 0.2 if cell.paradigm == "vanilla" else 0.3
        curve = [{"round": r + 1, "test_accuracy": min(0.99, good * (r + 1)), "bytes": 0 if cell.paradigm ==
                  CENTRALIZED else 1_000_000 * (r + 1), "round_seconds": 1.0, "seconds": float(r + 1)}
                 for r in range(rounds)]
        clients = cell.clients or 1
        return {"curve": curve, "bytes_up": 0 if cell.paradigm == CENTRALIZED else 600_000 * rounds * clients,
                "bytes_down": 0 if cell.paradigm == CENTRALIZED else 400_000 * rounds * clients,
                "total_seconds": 2.0 + rounds, "peak_rss_server_mb": None if cell.paradigm == CENTRALIZED else 300.0,
                "peak_rss_client_max_mb": 250.0}


def small_suite(**overrides):
    return parse_suite(suite_dict(matrix={"paradigms": ["vanilla", "splitfed_v1"], "datasets": ["mnist"],
                                          "partitions": ["homo"], "clients": [2], "seeds": [0]}, **overrides))


def test_finished_cells_are_skipped_on_rerun(tmp_path):
    suite = small_suite()
    first = FakeRunner()
    outcome = run_suite(suite, tmp_path, runner=first, show_progress=False, plots=False, echo=lambda m: None)
    assert first.calls == ["centralized/mnist/all/s0", "vanilla/mnist/homo/c2/s0", "splitfed_v1/mnist/homo/c2/s0"]
    assert outcome.ran == first.calls and not outcome.skipped and not outcome.failed
    second = FakeRunner()
    again = run_suite(suite, tmp_path, runner=second, show_progress=False, plots=False, echo=lambda m: None)
    assert second.calls == []
    assert sorted(again.skipped) == sorted(first.calls)
    assert len(again.rows) == 3
    assert len(ResultsStore(tmp_path).load()) == 3


def test_failed_cells_are_recorded_and_run_again(tmp_path):
    suite = small_suite()
    messages = []
    first = FakeRunner(fail={"vanilla/mnist/homo/c2/s0"})
    outcome = run_suite(suite, tmp_path, runner=first, show_progress=False, plots=False, echo=messages.append)
    assert outcome.failed == ["vanilla/mnist/homo/c2/s0"]
    assert len(first.calls) == 3  # the failure did not stop the matrix
    rows = ResultsStore(tmp_path).load()
    assert rows["vanilla/mnist/homo/c2/s0"]["status"] == "failed"
    assert "RuntimeError: boom" in rows["vanilla/mnist/homo/c2/s0"]["error"]
    assert any("FAILED" in m for m in messages)
    assert "## Failed cells" in (tmp_path / "report.md").read_text()
    second = FakeRunner()
    run_suite(suite, tmp_path, runner=second, show_progress=False, plots=False, echo=lambda m: None)
    assert second.calls == ["vanilla/mnist/homo/c2/s0"]
    assert ResultsStore(tmp_path).load()["vanilla/mnist/homo/c2/s0"]["status"] == "ok"


def test_a_changed_config_reruns_its_cells(tmp_path):
    run_suite(small_suite(), tmp_path, runner=FakeRunner(), show_progress=False, plots=False, echo=lambda m: None)
    changed = small_suite(overrides={"paradigms": {"vanilla": {"lr": 0.2}}})
    runner = FakeRunner()
    run_suite(changed, tmp_path, runner=runner, show_progress=False, plots=False, echo=lambda m: None)
    assert runner.calls == ["vanilla/mnist/homo/c2/s0"]


def test_progress_and_estimates_are_printed(tmp_path, capsys):
    messages = []
    run_suite(small_suite(), tmp_path, runner=FakeRunner(), show_progress=True, plots=False, echo=messages.append)
    starts = [m for m in messages if m.startswith("[")]
    assert len(starts) == 3 and all("expected ≈" in m for m in starts)
    assert "prior table" in starts[0]  # nothing finished yet
    assert "finished" in starts[2] or "rescaled" in starts[2]  # refined from the finished cells
    assert "suite t" in capsys.readouterr().err  # the matrix progress bar


def test_interrupted_results_line_is_ignored(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"key": "a", "status": "ok"})
    with open(store.path, "a") as handle:
        handle.write('{"key": "b", "sta')  # cut short by a crash
    assert list(store.load()) == ["a"]


# ---- rows, estimates, writers -------------------------------------------------------------------------------

def fake_rows(tmp_path):
    suite = parse_suite(suite_dict(matrix={"paradigms": ["vanilla", "splitfed_v1"], "datasets": ["mnist"],
                                           "partitions": ["homo", "hetero:0.5"], "clients": [2], "seeds": [0, 1]}))
    cells = expand(suite)
    runner = FakeRunner()
    return suite, cells, [finalize_row(c, runner(c, tmp_path), target=suite.target_for(c.dataset)) for c in cells]


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
    line = next(l for l in text.splitlines() if l.startswith("| splitfed_v1"))
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


def test_peak_rss_of_a_live_process():
    assert read_status_kib(os.getpid(), "VmRSS") > 0
    assert peak_rss_bytes(os.getpid()) >= read_status_kib(os.getpid(), "VmRSS") * 1024
    assert peak_rss_bytes(2 ** 22 + 12345) is None  # no such process


def test_federation_probe_reads_the_children_peaks_and_restores_federation():
    import subprocess
    import sys
    from types import SimpleNamespace

    from slperf import federation
    from slperf.common.bench_procs import FederationProbe

    original = (federation.Federation.start, federation.Federation.stop)
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
             for _ in range(2)]
    try:
        with FederationProbe(poll_seconds=0.05) as probe:
            assert (federation.Federation.start, federation.Federation.stop) != original
            probe._federation = SimpleNamespace(server=procs[0], clients={"c1": procs[1]})
            probe.sample()
            peaks = probe.peaks
            with pytest.raises(RuntimeError, match="already open"):
                FederationProbe().__enter__()
        assert (federation.Federation.start, federation.Federation.stop) == original
        assert peaks["server"] > 1 << 20 and peaks["clients"]["c1"] > 1 << 20
    finally:
        for proc in procs:
            proc.stdin.close()
            proc.wait(timeout=10)


# ---- centralized baseline -------------------------------------------------------------------------------------

def test_centralized_baseline_on_a_tiny_capped_config():
    from slperf.common.centralized import train_centralized

    config = {"dataset": "mnist", "model": "lenet", "epochs": 3, "batch_size": 16, "lr": 0.05,
              "max_train_samples": 256, "max_test_samples": 200, "seed": 0}
    seen = []
    result = train_centralized(config, on_epoch=seen.append)
    assert result["paradigm"] == CENTRALIZED and result["rounds"] == 3 and len(result["curve"]) == 3
    assert result["train_samples"] == 256 and result["test_samples"] == 200
    assert seen == result["curve"]
    assert [p["round"] for p in result["curve"]] == [1, 2, 3]
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["best_test_accuracy"] == max(p["test_accuracy"] for p in result["curve"])
    # 48 steps on 256 MNIST samples: the loss falls and the accuracy leaves chance (0.1) behind
    assert result["curve"][-1]["train_loss"] < result["curve"][0]["train_loss"]
    assert result["test_accuracy"] > 0.2
    assert result["bytes_up"] == result["bytes_down"] == 0
    again = train_centralized(config)
    assert [p["test_accuracy"] for p in again["curve"]] == [p["test_accuracy"] for p in result["curve"]]


def test_centralized_equals_a_one_client_shard_reference():
    """Same budget, same batches: a 1-client homo shard reference with the same seed sees the same data."""
    import numpy as np

    from slperf.common.config_loader import config_from_mapping
    from slperf.common.data import load_dataset
    from slperf.common.shards import build_client_data, train_indices

    config, _ = config_from_mapping({"dataset": "mnist", "clients": 1, "max_train_samples": 300, "seed": 4})
    shard = build_client_data(config, 0).train
    pool = train_indices(config, np.asarray(load_dataset("mnist").arrays.train_y))
    assert np.array_equal(shard.indices, pool)


# ---- the real thing (slow) -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_micro_suite_end_to_end(tmp_path):
    suite_file = tmp_path / "micro.yaml"
    suite_file.write_text(yaml.safe_dump({
        "name": "micro",
        "base": {"model": "lenet", "epochs": 2, "batch_size": 32, "lr": 0.05, "max_train_samples": 400,
                 "max_test_samples": 200, "torch_threads": 1},
        "matrix": {"paradigms": ["splitfed_v1"], "datasets": ["mnist"], "partitions": ["homo"], "clients": [2],
                   "seeds": [0]},
        "target_accuracy": 0.3,
    }))
    out = tmp_path / "out"
    messages = []
    outcome = run_suite(suite_file, out, show_progress=False, echo=messages.append)
    assert not outcome.failed, [r.get("error") for r in outcome.rows]
    assert outcome.ran == ["centralized/mnist/all/s0", "splitfed_v1/mnist/homo/c2/s0"]
    rows = {r["key"]: r for r in outcome.rows}
    fed = rows["splitfed_v1/mnist/homo/c2/s0"]
    assert fed["status"] == "ok" and fed["rounds"] == 2 and len(fed["curve"]) == 2
    assert 0 < fed["final_accuracy"] <= 1 and fed["bytes_up"] > 0 and fed["bytes_down"] > 0
    assert fed["peak_rss_server_mb"] > 50 and fed["peak_rss_client_max_mb"] > 50
    assert fed["curve"][-1]["bytes"] == fed["bytes_up"] + fed["bytes_down"]
    assert Path(fed["run_dir"], "summary.json").exists()
    base = rows["centralized/mnist/all/s0"]
    assert base["status"] == "ok" and base["peak_rss_client_max_mb"] > 50 and base["bytes_up"] == 0
    for name in ("results.jsonl", "results.csv", "report.md"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| splitfed_v1 |" in report and "*centralized* (baseline)" in report
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["mnist_homo_c2_accuracy_vs_bytes.png", "mnist_homo_c2_accuracy_vs_round.png",
                     "mnist_homo_c2_accuracy_vs_time.png"]
    assert any("expected ≈" in m for m in messages)
    with open(out / "results.jsonl") as handle:
        assert len([json.loads(l) for l in handle if l.strip()]) == 2
    again = run_suite(suite_file, out, show_progress=False, echo=lambda m: None)
    assert again.ran == [] and sorted(again.skipped) == sorted(outcome.ran)
