"""Attacks asked for in a run config, end to end: a server and two client daemons as processes over mutual TLS;
every round's record in metrics.jsonl and the summary carry the leakage figures, and the run folder the
reconstruction grid."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_attacks_in_a_run_config_are_recorded_per_round_and_in_the_summary(pki, daemons):
    summary, records = daemons.federate(
        pki,
        {
            "paradigm": "splitfed_v1",
            "clients": 2,
            "client_ids": ["c1", "c2"],
            "epochs": 1,
            "batch_size": 64,
            "lr": 0.05,
            "max_train_samples": 512,
            "max_test_samples": 200,
            "seed": 0,
            "attacks": ["dcor", "inversion_whitebox"],
        },
    )
    (record,) = records
    privacy = record["privacy"]
    assert set(privacy["per_client"]) == {"c1", "c2"}
    assert privacy["dcor"] > 0.9 and privacy["inversion_ssim"] > 0.6, privacy
    assert summary["privacy"]["inversion_ssim"] == privacy["inversion_ssim"]
    assert (daemons.tmp / "runs" / summary["run_id"] / "inversion_round0.png").is_file()
