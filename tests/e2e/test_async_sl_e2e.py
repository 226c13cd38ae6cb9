"""AsyncSL end to end: a server and two client daemons as processes over mutual TLS. With ``thred: 1`` every
improvement counts as too small, so each client goes A, A, B, C: the run still learns, and in its C round a
client sends no training traffic at all."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_async_federation_over_mtls(pki, daemons):
    summary, records = daemons.federate(
        pki,
        {
            "variants_type": "Asynchronous",
            "thred": 1.0,
            "clients": 2,
            "client_ids": ["c1", "c2"],
            "epochs": 4,
            "batch_size": 32,
            "lr": 0.05,
            "max_train_samples": 600,
            "max_test_samples": 500,
            "seed": 1,
        },
    )
    assert summary["paradigm"] == "async" and summary["rounds"] == 4
    assert summary["test_accuracy"] > 0.3, summary  # chance is 0.1
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
