"""A server announcing a low message rate in its Welcome: the client daemons pace themselves below it, so the run
finishes with nobody dropped (before, the clients sent as fast as they computed and their excess envelopes were
refused with RESOURCE_EXHAUSTED). Real processes over mutual TLS on loopback."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

RATE = 10  # envelopes per second per session; the server's burst is twice that


def test_clients_keep_to_the_message_rate_the_server_announced(pki, daemons):
    summary, records = daemons.federate(
        pki,
        {
            "paradigm": "vanilla",
            "clients": 2,
            "client_ids": ["c1", "c2"],
            "epochs": 1,
            "batch_size": 8,  # 30 training batches per client: past the burst of 20
            "lr": 0.05,
            "max_train_samples": 480,
            "max_test_samples": 100,
            "seed": 0,
        },
        "--max-messages-per-second",
        str(RATE),
    )
    (record,) = records
    assert record["participants"] == ["c1", "c2"] and not record.get("dropped"), record
    sent = [sum(kinds.values()) for kinds in summary["messages_up_by_kind"].values()]
    assert min(sent) > 2 * RATE, f"each client must send more than the server's burst allows at once: {sent}"
    server_log = daemons.log("server")
    assert "messages_per_second" not in server_log, server_log[-3000:]
