"""psl, sglr, splitfed_v2 and fedavg end to end: a real server and two client daemons as processes over
mutual TLS on loopback, a small MNIST run started by the operator; the run must finish above chance and
move the bytes its protocol says it moves."""

from __future__ import annotations

import json

import pytest
import yaml

from slperf.common.security.credentials import operator_channel_credentials
from slperf.operator import OperatorClient
from slperf.slserver.run_folder import RunFolder

pytestmark = pytest.mark.slow

LENET_BYTES = 44426 * 4  # every parameter of the LeNet, float32
ACTS_PER_SAMPLE = 6 * 12 * 12 * 4  # LeNet cut after block 1


def _run(tmp_path, pki, daemons, **config):
    base = {
        "clients": 2,
        "client_ids": ["c1", "c2"],
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "max_train_samples": 600,
        "max_test_samples": 300,
        "seed": 1,
    }
    base.update(config)
    text = yaml.safe_dump(base)
    runs = tmp_path / "runs"
    port = daemons.server(pki, runs)
    daemons.client(port, "c1", pki)
    daemons.client(port, "c2", pki)
    op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")
    try:
        run_id = op.start_run(text)
        status = op.follow(run_id, lambda record: None)
    finally:
        op.close()
    assert status.state == "finished", status.error + daemons.log("server")[-3000:]
    summary = json.loads(status.summary_json)
    records = RunFolder(runs / run_id).read_metrics()
    return summary, records


@pytest.mark.parametrize(
    "paradigm,options,floor",
    [
        ("psl", {"server_update": "sum", "partition_method": "hetero", "partition_alpha": 1.0}, 0.25),
        ("sglr", {"lr": 0.02}, 0.3),
        ("splitfed_v2", {}, 0.3),
        ("fedavg", {"max_train_samples": 1200}, 0.3),  # no activations cross: more data costs no wire time
    ],
)
def test_runs_over_mutual_tls_and_learns(tmp_path, pki, daemons, paradigm, options, floor):
    summary, records = _run(tmp_path, pki, daemons, paradigm=paradigm, **options)
    rounds = options.get("epochs", 2)
    assert summary["paradigm"] == paradigm and summary["rounds"] == rounds
    assert summary["test_accuracy"] > floor, [r["test_accuracy"] for r in records]  # chance is 0.1
    assert all(r["dropped"] == [] and sorted(r["participants"]) == ["c1", "c2"] for r in records)
    samples = {cid: records[0]["per_client"][cid]["samples"] for cid in ("c1", "c2")}
    assert sum(samples.values()) == options.get("max_train_samples", 600)
    for cid, n in samples.items():
        up = records[0]["per_client"][cid]["bytes_up"]
        if paradigm == "fedavg":
            # only the model goes up (plus framing), no activations
            assert LENET_BYTES <= up < LENET_BYTES * 1.05, up
        else:
            # every training sample's activations go up once per round
            assert up >= n * ACTS_PER_SAMPLE, (up, n)
    if paradigm == "psl":
        assert len(set(samples.values())) == 2  # unequal shards through the lock-step barrier
        assert set(records[-1]["eval_extra"]["test_accuracy_per_client"]) == {"c1", "c2"}
