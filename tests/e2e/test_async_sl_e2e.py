"""AsyncSL end to end: a server and two client daemons as processes over mutual TLS. With ``thred: 1`` every
improvement counts as too small, so each client goes A, A, B, C: the run still learns, and in its C round a
client sends no training traffic at all."""
from __future__ import annotations

import json

import pytest
import yaml

from slperf.common import tls
from slperf.common.results import RunFolder
from slperf.operator import OperatorClient

pytestmark = pytest.mark.slow


def test_async_federation_over_mtls(tmp_path, pki, daemons):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "variants_type": "Asynchronous", "thred": 1.0, "clients": 2, "client_ids": ["c1", "c2"], "epochs": 4,
        "batch_size": 32, "lr": 0.05, "max_train_samples": 600, "max_test_samples": 500, "seed": 1}))
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
    assert summary["paradigm"] == "async" and summary["rounds"] == 4
    assert summary["test_accuracy"] > 0.3, summary  # chance is 0.1
    records = RunFolder(runs / run_id).read_metrics()
    states = [record["extra"]["states"] for record in records]
    assert states[0] == states[1] == {"c1": "A", "c2": "A"}
    for record, used in zip(records, states):
        for cid, state in used.items():
            figures = record["per_client"][cid]
            if state == "C":  # nothing crosses the wire for a silent client's turn
                assert figures["bytes_up"] == 0 and figures["bytes_down"] == 0
            else:  # 300 samples of 6x12x12 float32 activations up
                assert figures["bytes_up"] >= 300 * 864 * 4
            if state == "B":  # no gradients come down: only the bottom weights and per-batch metrics
                assert figures["bytes_down"] < 20_000
    assert any("C" in used.values() for used in states), states
