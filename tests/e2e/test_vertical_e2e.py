"""Vertical SL over real gRPC with mutual TLS: Adult split by columns across 3 client daemons."""

from __future__ import annotations

import json

import pytest
import yaml

from slperf.common.security.credentials import operator_channel_credentials
from slperf.operator import OperatorClient

pytestmark = pytest.mark.slow


def test_vertical_adult_over_mtls(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs")
    for cid in ("c1", "c2", "c3"):
        daemons.client(port, cid, pki)
    config = {
        "paradigm": "vertical",
        "dataset": "adult",
        "clients": 3,
        "client_ids": ["c1", "c2", "c3"],
        "data_vertical_list": [6, 4, 4],
        "cut_layer_vertical_list": [4, 3, 3],
        "epochs": 1,
        "batch_size": 128,
        "lr": 0.05,
        "max_train_samples": 4000,
        "max_test_samples": 2000,
    }
    op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")
    status = op.follow(op.start_run(yaml.safe_dump(config)), lambda r: None)
    op.close()
    assert status.state == "finished", status.error
    summary = json.loads(status.summary_json)
    assert summary["test_accuracy"] > 0.76  # the majority class alone gives 0.76 on Adult's test split
