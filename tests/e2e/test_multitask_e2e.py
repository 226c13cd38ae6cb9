"""Multi-task SL end to end: a server and two client daemons as processes over mutual TLS, one client per
task group (``client_split: [1, 2]``); the run finishes and both tasks learn."""
from __future__ import annotations

import json

import pytest
import yaml

from slperf.common import tls
from slperf.common.results import RunFolder
from slperf.operator import OperatorClient

pytestmark = pytest.mark.slow


def test_multitask_federation_over_mtls(tmp_path, pki, daemons):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "variants_type": "TaskAgnostic", "client_split": [1, 2], "task_datasets": ["mnist", "mnist"],
        "clients": 2, "client_ids": ["c1", "c2"], "epochs": 2, "batch_size": 32, "lr": 0.05,
        "max_train_samples": 400, "max_test_samples": 500, "seed": 1}))
    runs = tmp_path / "runs"
    port = daemons.server(pki, runs)
    for cid in ("c1", "c2"):
        daemons.client(port, cid, pki)
    op = OperatorClient(f"127.0.0.1:{port}", tls.operator_channel_credentials(pki), server_name="localhost")
    run_id = op.start_run(cfg.read_text())
    status = op.follow(run_id, lambda record: None)
    op.close()
    assert status.state == "finished", status.error + daemons.log("server")[-3000:]
    summary = json.loads(status.summary_json)
    assert summary["paradigm"] == "multitask" and summary["rounds"] == 2
    assert summary["test_accuracy"] > 0.3, summary  # chance is 0.1
    last = RunFolder(runs / run_id).read_metrics()[-1]
    assert last["participants"] == ["c1", "c2"]
    assert set(last["extra"]["task_accuracy"]) == {"0", "1"}
    assert all(acc > 0.2 for acc in last["extra"]["task_accuracy"].values()), last["extra"]
    # Each client is its task's only member and trains on that task's whole 400-sample pool.
    assert all(figures["samples"] == 400 for figures in last["per_client"].values())
