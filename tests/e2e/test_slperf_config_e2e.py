"""One tiny real run from SLPerf's own config.yaml: every shipped key and value, only the data set, the rounds and
two sample caps changed to keep it short. `slperf federation` runs it in a folder without data, whose ``./data/``
``download: true`` fills from the pinned offline copy, saying so once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SHIPPED = Path(__file__).parents[1] / "common" / "slperf_configs" / "config.yaml"


def test_slperfs_shipped_config_runs_and_fills_its_data_dir(tmp_path):
    config = yaml.safe_load(SHIPPED.read_text())
    config.update(
        {"variants_type": "vanilla", "dataset": "mnist", "epochs": 1, "max_train_samples": 256, "max_test_samples": 128}
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "slperf.cli", "federation", "config.yaml", "--out", "runs", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "data" / "train-images-idx3-ubyte").is_file()
    logs = proc.stdout + proc.stderr + "".join(p.read_text() for p in (tmp_path / "runs").rglob("*.log"))
    assert logs.count("filled it from the pinned offline copy") == 1, logs[-3000:]
    assert "ignoring 'thred': it is an option of the async paradigm, not of vanilla" in logs
    (run,) = [p for p in (tmp_path / "runs").iterdir() if (p / "summary.json").exists()]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["paradigm"] == "vanilla" and summary["rounds"] == 1 and summary["test_accuracy"] > 0.1
