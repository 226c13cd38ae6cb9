"""The suite loop: resumability with a fake runner (finished cells skipped, failed and changed cells run
again), progress and estimates, and (slow) a two-cell micro-suite run for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from bench_fakes import FakeRunner, small_suite

from slperf.bench import runners
from slperf.bench.run import run_suite
from slperf.bench.store import ResultsStore
from slperf.federation import RestartPolicy


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


# ---- the real thing (slow) -------------------------------------------------------------------------------------


def test_the_restart_policy_reaches_every_federation_cell_and_only_the_default_runner(tmp_path, monkeypatch):
    fake = FakeRunner()
    policies = []

    def federation_cell(cell, work_dir, *, echo, show_progress, restart):
        policies.append(restart)
        return fake(cell, work_dir)

    monkeypatch.setattr(runners, "run_federation_cell", federation_cell)
    off = RestartPolicy(enabled=False)
    outcome = run_suite(small_suite(), tmp_path, show_progress=False, plots=False, echo=lambda m: None, restart=off)
    assert not outcome.failed and len(outcome.ran) == 3  # the centralized baseline starts no federation
    assert policies == [off, off]
    with pytest.raises(ValueError, match="default runner"):
        run_suite(small_suite(), tmp_path / "given", runner=FakeRunner(), restart=off, show_progress=False)


@pytest.mark.slow
def test_micro_suite_end_to_end(tmp_path):
    suite_file = tmp_path / "micro.yaml"
    suite_file.write_text(
        yaml.safe_dump(
            {
                "name": "micro",
                "base": {
                    "model": "lenet",
                    "epochs": 2,
                    "batch_size": 32,
                    "lr": 0.05,
                    "max_train_samples": 400,
                    "max_test_samples": 200,
                    "torch_threads": 1,
                },
                "matrix": {
                    "paradigms": ["splitfed_v1"],
                    "datasets": ["mnist"],
                    "partitions": ["homo"],
                    "clients": [2],
                    "seeds": [0],
                },
                "target_accuracy": 0.3,
            }
        )
    )
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
    assert fed["client_restarts"] == 0 and fed["clients_lost"] == [], "a clean cell says so"
    assert fed["curve"][-1]["bytes"] == fed["bytes_up"] + fed["bytes_down"]
    assert Path(fed["run_dir"], "summary.json").exists()
    base = rows["centralized/mnist/all/s0"]
    assert base["status"] == "ok" and base["peak_rss_client_max_mb"] > 50 and base["bytes_up"] == 0
    for name in ("results.jsonl", "results.csv", "report.md"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| splitfed_v1 |" in report and "*centralized* (baseline)" in report
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == [
        "mnist_homo_c2_accuracy_vs_bytes.png",
        "mnist_homo_c2_accuracy_vs_round.png",
        "mnist_homo_c2_accuracy_vs_time.png",
    ]
    assert any("expected ≈" in m for m in messages)
    with open(out / "results.jsonl") as handle:
        assert len([json.loads(ln) for ln in handle if ln.strip()]) == 2
    again = run_suite(suite_file, out, show_progress=False, echo=lambda m: None)
    assert again.ran == [] and sorted(again.skipped) == sorted(outcome.ran)
