"""Multi-task SL end to end: a server and two client daemons as processes over mutual TLS, one client per
task group (``client_split: [1, 2]``); the run finishes and both tasks learn."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_multitask_federation_over_mtls(pki, daemons):
    summary, records = daemons.federate(
        pki,
        {
            "variants_type": "TaskAgnostic",
            "client_split": [1, 2],
            "task_datasets": ["mnist", "mnist"],
            "clients": 2,
            "client_ids": ["c1", "c2"],
            "epochs": 2,
            "batch_size": 32,
            "lr": 0.05,
            "max_train_samples": 400,
            "max_test_samples": 500,
            "seed": 1,
        },
    )
    assert summary["paradigm"] == "multitask" and summary["rounds"] == 2
    assert summary["test_accuracy"] > 0.3, summary  # chance is 0.1
    last = records[-1]
    assert last["participants"] == ["c1", "c2"]
    assert set(last["eval_extra"]["task_accuracy"]) == {"0", "1"}
    assert all(acc > 0.2 for acc in last["eval_extra"]["task_accuracy"].values()), last["eval_extra"]
    # Each client is its task's only member and trains on that task's whole 400-sample pool.
    assert all(figures["samples"] == 400 for figures in last["per_client"].values())
