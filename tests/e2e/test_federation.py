"""The main job end to end: `slperf federation` starts a server and client daemons as processes over
mutual TLS, runs the config to the end and leaves a complete run folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from slperf.slserver.run_folder import RunFolder

pytestmark = pytest.mark.slow


def _config(tmp_path, **overrides):
    config = {
        "paradigm": "splitfed_v1",
        "dataset": "mnist",
        "clients": 2,
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "max_train_samples": 1200,
        "max_test_samples": 500,
        "seed": 1,
    }
    config.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("paradigm", ["splitfed_v1", "vanilla"])
def test_federation_cli_leaves_a_complete_run_folder(tmp_path, paradigm):
    out = tmp_path / "runs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "slperf.cli",
            "federation",
            str(_config(tmp_path, paradigm=paradigm)),
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test accuracy" in proc.stdout
    run_dirs = [p for p in out.iterdir() if p.is_dir() and p.name != "logs"]
    assert len(run_dirs) == 1
    run = run_dirs[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["paradigm"] == paradigm
    assert summary["rounds"] == 2
    assert summary["clients"] == 2
    assert sorted(summary["per_client"]) == ["c1", "c2"]
    assert summary["test_accuracy"] > 0.4, summary  # 1200 MNIST samples, 2 rounds: far above chance (0.1)
    assert summary["bytes_up"] > 0 and summary["bytes_down"] > 0
    # Per batch the activations (32 x 6x12x12 float32 = 110 KB) go up and a gradient of equal size comes down.
    per_client_up = summary["per_client"]["c1"]["train_bytes_up"]
    batches = 2 * (600 // 32 + 1)
    assert per_client_up >= batches * 32 * 864 * 4 * 0.9
    records = RunFolder(run).read_metrics()
    assert [r["round"] for r in records] == [0, 1]
    assert all(set(r["per_client"]) == {"c1", "c2"} for r in records)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["paradigm"] == paradigm and config["client_ids"] == ["c1", "c2"]
    for plot in ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "accuracy_vs_time.png"):
        assert (run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "checkpoint.pt").exists()
    assert summary["split_layer"] == 1 and summary["cut_shape_per_sample"] == [6, 12, 12]
    assert summary["cut_bytes_per_sample_fp32"] == 864 * 4


def test_federation_rejects_a_broken_config_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("paradigm: splitfed_v1\npartition_alfa: 0.5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "slperf.cli", "federation", str(path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "partition_alfa" in proc.stderr
    assert "Traceback" not in proc.stderr
