"""U-shaped SL end to end, sequential and parallel: a server and two client daemons as processes over mutual
TLS; the run finishes, learns, and the per-client traffic is that of the 4-message exchange."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("paradigm, name", [("Ushaped", "ushaped"), ("parallel_U_Shape", "ushaped")])
def test_ushaped_federation_over_mtls(pki, daemons, paradigm, name):
    summary, records = daemons.federate(
        pki,
        {
            "paradigm": paradigm,
            "clients": 2,
            "client_ids": ["c1", "c2"],
            "epochs": 2,
            "batch_size": 32,
            "lr": 0.05,
            "max_train_samples": 600,
            "max_test_samples": 500,
            "seed": 1,
        },
    )
    assert summary["paradigm"] == name and summary["rounds"] == 2
    assert summary["test_accuracy"] > 0.3, summary  # chance is 0.1
    for record in records:
        assert record["participants"] == ["c1", "c2"] and record["dropped"] == []
        for figures in record["per_client"].values():
            # 300 samples per client: head acts (6x12x12) up and their gradient down, middle output (256)
            # down and its gradient up, all float32.
            assert figures["bytes_up"] >= 300 * (864 + 256) * 4
            assert figures["bytes_down"] >= 300 * (864 + 256) * 4
