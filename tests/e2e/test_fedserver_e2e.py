"""SplitFed with a separate fed server end to end (issue 13 section 1): `slperf federation` starts the main server, the
fed server and two client daemons as processes on loopback over mutual TLS; the run completes with the accuracy of
the plain topology (same seed, same data, the same FedAvg), and what crossed the wire proves the split: the main
server's sessions carried no client weights (``model_state`` from clients, counted by kind per session), while the
fed server averaged every client's bottom every round (its ``SLPERF_FED_SETTLED`` lines)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

CONFIG = {
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


def _federation(tmp_path: Path, name: str, **overrides: Any) -> tuple[dict[str, Any], Path]:
    """Runs the config to the end (subprocess.run waits and `slperf federation` stops every child it started, also
    when the run fails); the run's summary and its logs folder."""
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump({**CONFIG, **overrides}))
    out = tmp_path / name
    cmd = [sys.executable, "-m", "slperf.cli", "federation", str(config_path), "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name != "logs"]
    return json.loads((run / "summary.json").read_text()), out / "logs"


def test_fed_server_splitfed_matches_the_plain_topology_and_the_server_never_receives_a_bottom(tmp_path):
    plain, _ = _federation(tmp_path, "plain")
    fed, logs = _federation(tmp_path, "fed", fed_server={"address": "127.0.0.1:0"})

    assert fed["rounds"] == 2 and sorted(fed["per_client"]) == ["c1", "c2"]
    assert fed["test_accuracy"] > 0.4, fed  # far above chance (0.1)
    assert abs(fed["test_accuracy"] - plain["test_accuracy"]) <= 0.05, (fed["test_accuracy"], plain["test_accuracy"])

    # The counter sees weights where they do cross: in the plain topology each client sends its bottom every round.
    for cid in ("c1", "c2"):
        assert plain["messages_up_by_kind"][cid].get("model_state", 0) >= 2, plain["messages_up_by_kind"]
        kinds = fed["messages_up_by_kind"][cid]
        assert kinds.get("cut_tensor", 0) > 0, kinds  # the run went through this server...
        assert "model_state" not in kinds, kinds  # ...and no client weights did

    # The fed server received and averaged both clients' bottoms in every round.
    settled = re.findall(
        r"SLPERF_FED_SETTLED run=(\S+) round=(\d+) averaged=(\S*) missing=(\S*)", (logs / "fedserver.log").read_text()
    )
    assert [(int(r), averaged, missing) for _, r, averaged, missing in settled] == [(0, "c1,c2", ""), (1, "c1,c2", "")]
    assert {run_id for run_id, *_ in settled} == {fed["run_id"]}
