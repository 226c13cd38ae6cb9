"""The simulation backend's entry points: ``run_simulation`` (``slperf federation --backend sim``) leaves a
federation's run folder and summary, the CLI's ``--backend`` overrides the config's, a bench cell with
``backend: sim`` runs in-process with the keys of a federation cell, and a server refuses a sim config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from slperf import cli
from slperf.bench import runners
from slperf.bench.run import run_suite
from slperf.sim import run_simulation
from slperf.slserver.run_folder import RunFolder

TINY = {
    "paradigm": "splitfed_v1",
    "clients": 3,
    "epochs": 2,
    "batch_size": 32,
    "max_train_samples": 192,
    "max_test_samples": 100,
    "torch_threads": 1,
}
# What run_federation's summary holds besides the server's summary; the bench and the CLI read these.
FEDERATION_KEYS = {"federation_seconds", "run_dir", "supervisor", "bytes_up", "train_bytes_up", "test_accuracy"}


def _config(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**TINY, **overrides}))
    return path


def test_a_simulation_leaves_a_federations_run_folder_and_summary(tmp_path):
    summary = run_simulation(_config(tmp_path), tmp_path / "runs", show_progress=False, echo=lambda line: None)
    assert FEDERATION_KEYS <= set(summary) and summary["rounds"] == 2
    assert summary["client_ids"] == ["c1", "c2", "c3"] and summary["supervisor"]["lost"] == {}
    folder = Path(summary["run_dir"])
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "summary.json", "state.json"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "state.json").read_text())["state"] == "finished"
    assert yaml.safe_load((folder / "config.yaml").read_text())["backend"] == "sim"
    records = RunFolder(folder).read_metrics()
    assert [r["round"] for r in records] == [0, 1]
    assert all(set(r["participants"]) == {"c1", "c2", "c3"} and r["bytes_up"] > 0 for r in records)
    assert (tmp_path / "runs" / "logs" / "sim.log").read_text()  # every party's log lines, in one file


def test_the_cli_runs_the_config_backend_and_its_flag_overrides_it(tmp_path, monkeypatch):
    chosen = []

    def fake(name):
        def run(config_path, out_dir, **kwargs):
            chosen.append(name)
            return {
                "federation_seconds": 1.0, "paradigm": "splitfed_v1", "dataset": "mnist", "clients": 3, "rounds": 2,
                "test_accuracy": 0.5, "best_test_accuracy": 0.5, "train_bytes_up": 1, "train_bytes_down": 1,
                "supervisor": {"restarts": {}, "lost": {}, "log": ""}, "run_dir": str(out_dir),
            }  # fmt: skip

        return run

    monkeypatch.setattr("slperf.sim.run_simulation", fake("sim"))
    monkeypatch.setattr("slperf.federation.run_federation", fake("federation"))
    runner = CliRunner()
    sim_config = _config(tmp_path, backend="sim")
    for args in (["--backend", "federation"], [], ["--backend", "sim"]):
        result = runner.invoke(cli.main, ["federation", *args, "--no-progress", str(sim_config)])
        assert result.exit_code == 0, result.output
    assert chosen == ["federation", "sim", "sim"]
    refused = runner.invoke(cli.main, ["federation", "--backend", "sim", "--no-restart", str(sim_config)])
    assert refused.exit_code == 2 and "mean nothing with the sim backend" in refused.output


def test_a_sim_cell_runs_in_process_with_a_federation_cells_keys(tmp_path, monkeypatch):
    federation_keys = set()

    def federation_cell(cell, work_dir, *, echo, show_progress, restart):
        raise AssertionError("a sim cell must not start a federation")

    monkeypatch.setattr(runners, "run_federation_cell", federation_cell)
    suite = {
        "name": "simcells",
        "base": {**{k: v for k, v in TINY.items() if k not in ("paradigm", "clients")}, "epochs": 1},
        "matrix": {"paradigms": ["vanilla"], "datasets": ["mnist"], "partitions": ["homo"], "clients": [2]},
        "centralized": False,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    outcome = run_suite(path, tmp_path / "out", show_progress=False, plots=False, echo=lambda m: None, backend="sim")
    assert not outcome.failed and len(outcome.rows) == 1, [r.get("error") for r in outcome.rows]
    row = outcome.rows[0]
    assert row["config"]["backend"] == "sim" and row["backend"] == "sim"
    federation_keys = {
        "run_dir", "run_id", "rounds", "final_accuracy", "best_accuracy", "bytes_up", "bytes_down", "train_bytes_up",
        "train_bytes_down", "train_seconds", "run_seconds", "total_seconds", "peak_rss_server_mb",
        "peak_rss_client_max_mb", "peak_rss_client_mean_mb", "peak_rss_clients_mb", "client_restarts", "clients_lost",
    }  # fmt: skip
    assert federation_keys <= set(row)
    assert row["peak_rss_process_mb"] > 0 and row["client_restarts"] == 0 and row["bytes_up"] > 0


def test_an_unknown_backend_is_a_config_error(tmp_path):
    from slperf.common.config import ConfigError
    from slperf.common.config_loader import load_config

    with pytest.raises(ConfigError, match="'backend' must be one of federation, sim"):
        load_config(_config(tmp_path, backend="ray"))
