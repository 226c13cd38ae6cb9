"""U-shaped SL end to end, sequential and parallel: a server and two client daemons as processes over mutual
TLS; the run finishes, learns, and the per-client traffic is that of the 4-message exchange."""
from __future__ import annotations

import json

import pytest
import yaml

from slperf.common import tls
from slperf.common.results import RunFolder
from slperf.operator import OperatorClient

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("paradigm, name", [("Ushaped", "ushaped"), ("parallel_U_Shape", "ushaped_parallel")])
def test_ushaped_federation_over_mtls(tmp_path, pki, daemons, paradigm, name):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "paradigm": paradigm, "clients": 2, "client_ids": ["c1", "c2"], "epochs": 2, "batch_size": 32,
        "lr": 0.05, "max_train_samples": 600, "max_test_samples": 500, "seed": 1}))
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
    assert summary["paradigm"] == name and summary["rounds"] == 2
    assert summary["test_accuracy"] > 0.3, summary  # chance is 0.1
    records = RunFolder(runs / run_id).read_metrics()
    for record in records:
        assert record["participants"] == ["c1", "c2"] and record["dropped"] == []
        for figures in record["per_client"].values():
            # 300 samples per client: head acts (6x12x12) up and their gradient down, middle output (256)
            # down and its gradient up, all float32.
            assert figures["bytes_up"] >= 300 * (864 + 256) * 4
            assert figures["bytes_down"] >= 300 * (864 + 256) * 4
