"""One participant with a valid certificate lies (``tests.faults.malicious_client``) while the others are honest,
over real gRPC: it must not decide the model or the results, nor hold a round open. Each run must finish for the
honest clients, with what the liar did recorded and the run marked ``degraded``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from slperf.common.security.credentials import operator_channel_credentials
from slperf.operator import OperatorClient
from slperf.pki import add_client
from slperf.slserver.checkpoint import load_checkpoint
from slperf.slserver.run_folder import RunFolder
from tests.conftest import child_env, client_args

pytestmark = pytest.mark.slow

BASE = {
    "clients": 3,
    "epochs": 1,
    "batch_size": 16,
    "eval_batch_size": 64,
    "lr": 0.05,
    "max_train_samples": 240,
    "max_test_samples": 128,
    "seed": 5,
    "client_timeout": 60,
    "torch_threads": 1,
}


def _liar(daemons, port: int, pki: Path, cid: str, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.faults.malicious_client", *flags, "--", *client_args(port, cid, pki)]
    proc = subprocess.Popen(
        cmd, stdout=open(daemons.tmp / f"{cid}.log", "wb"), stderr=subprocess.STDOUT, env=child_env()
    )
    daemons.procs.append(proc)
    return proc


def _run(daemons, pki: Path, liar: str, flags: list[str], config: dict[str, Any], honest: list[str]) -> dict[str, Any]:
    """A server, the honest daemons and the liar; the config run to its end. Its outcome: state, error, summary,
    records, state.json and the checkpoint's model."""
    runs = daemons.tmp / "runs"
    port = daemons.server(pki, runs)
    for cid in honest:
        daemons.client(port, cid, pki)
    _liar(daemons, port, pki, liar, *flags)
    op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")
    try:
        run_id = op.start_run(yaml.safe_dump({**BASE, **config}), "attacked")
        status = op.follow(run_id, lambda record: None)
    finally:
        op.close()
    folder = runs / run_id
    checkpoint = folder / "checkpoint.pt"
    return {
        "state": status.state,
        "error": status.error,
        "summary": json.loads(status.summary_json) if status.summary_json else {},
        "records": RunFolder(folder).read_metrics(),
        "state_json": json.loads((folder / "state.json").read_text()),
        "model": load_checkpoint(checkpoint)["model"] if checkpoint.exists() else {},
        "server_log": daemons.log("server"),
    }


def _finite(model: dict[str, dict[str, torch.Tensor]]) -> bool:
    return all(bool(torch.isfinite(t).all()) for seg in model.values() for t in seg.values() if t.is_floating_point())


@pytest.mark.parametrize("paradigm", ["splitfed_v1", "fedavg"])
def test_a_claimed_sample_count_does_not_make_the_global_model_the_liars(daemons, pki, paradigm):
    dump = daemons.tmp / "uploaded.safetensors"
    out = _run(
        daemons,
        pki,
        "c3",
        ["--claim-samples", str(2**63), "--dump", str(dump)],
        {"paradigm": paradigm, "client_ids": ["c1", "c2", "c3"]},
        ["c1", "c2"],
    )
    assert out["state"] == "finished", out["error"] + out["server_log"][-3000:]
    segment = "bottom" if paradigm == "splitfed_v1" else "model"
    uploaded, global_ = load_file(str(dump)), out["model"][segment]
    equal = sum(int((global_[k] == uploaded[k]).sum()) for k in uploaded)
    total = sum(t.numel() for t in uploaded.values())
    print(f"{paradigm}: {equal}/{total} values of the global {segment} equal the liar's upload")
    assert equal < total / 2
    (record,) = out["records"]
    (finding,) = [f for f in record["disagreements"] if f["client"] == "c3"]
    assert finding["figure"] == "samples" and finding["claimed"] == 2**63 and finding["counted"] == 80, finding
    assert out["state_json"]["degraded"] is True and out["summary"]["degraded"] is True


def test_huge_finite_activations_do_not_poison_the_shared_top(daemons, pki):
    out = _run(
        daemons,
        pki,
        "c3",
        ["--scale-acts", "1e30"],
        {"paradigm": "splitfed_v2", "epochs": 2, "client_ids": ["c1", "c2", "c3"]},
        ["c1", "c2"],
    )
    print(
        "state",
        out["state"],
        "records",
        [(r["participants"], r["dropped"], r["test_accuracy"]) for r in out["records"]],
    )
    assert out["state"] == "finished", out["error"]
    assert _finite(out["model"])
    for record in out["records"]:
        assert record["participants"] == ["c1", "c2"] and record["dropped"] == ["c3"], record
        assert record["misbehaved"]["c3"].startswith("poisoned compute: round"), record["misbehaved"]
        assert record["test_loss"] == record["test_loss"] and record["test_loss"] < 10  # finite, an honest model's
    assert out["state_json"]["degraded"] is True
    assert any("c3" in reason for reason in out["state_json"]["degraded_reasons"])


def test_forged_evaluation_and_phase_counts_are_not_the_results(daemons, pki):
    out = _run(
        daemons,
        pki,
        "c1",  # client index 0: the one fedavg used to evaluate through
        ["--forge-eval", "--forge-train"],
        {"paradigm": "fedavg", "client_ids": ["c1", "c2", "c3"]},
        ["c2", "c3"],
    )
    assert out["state"] == "finished", out["error"]
    (record,) = out["records"]
    print("fedavg test accuracy with a forged report:", record["test_accuracy"], "train_loss", record["train_loss"])
    assert record["test_accuracy"] < 1.0
    assert record["test_accuracy_source"] == "clients" and out["summary"]["test_accuracy_source"] == "clients"
    c1 = record["per_client"]["c1"]
    assert c1["train_loss"] is not None and c1["train_loss"] == c1["train_loss"]  # finite, not NaN
    figures = {f["figure"] for f in record["disagreements"] if f["client"] == "c1"}
    assert {"steps", "loss_sum", "test_correct"} <= figures, record["disagreements"]


def test_a_pass_that_never_ends_is_ended_at_the_shards_batches(daemons, pki):
    out = _run(
        daemons,
        pki,
        "c3",
        ["--endless"],
        {"paradigm": "splitfed_v1", "client_ids": ["c1", "c2", "c3"]},
        ["c1", "c2"],
    )
    assert out["state"] == "finished", out["error"]
    (record,) = out["records"]
    assert record["participants"] == ["c1", "c2"] and record["dropped"] == ["c3"]
    assert "more steps than" in record["misbehaved"]["c3"], record["misbehaved"]


@pytest.mark.parametrize("aggregation", ["fedavg", "median", "trimmed_mean"])
def test_robust_aggregation_against_one_client_sending_scaled_weights(tmp_path, daemons, pki, aggregation):
    add_client(pki, "c4")
    config = {
        "paradigm": "fedavg",
        "clients": 4,
        "client_ids": ["c1", "c2", "c3", "c4"],
        "epochs": 2,
        "max_train_samples": 1200,
        "max_test_samples": 500,
        "aggregation": aggregation,
        **({"trim_fraction": 0.25} if aggregation == "trimmed_mean" else {}),
    }
    out = _run(daemons, pki, "c4", ["--scale-weights", "-50"], config, ["c1", "c2", "c3"])
    assert out["state"] == "finished", out["error"]
    accuracy = out["records"][-1]["test_accuracy"]
    print(f"aggregation {aggregation}: test accuracy {accuracy:.3f} with one client sending weights x -50")
    if aggregation == "fedavg":
        assert accuracy < 0.3
    else:
        assert accuracy > 0.6


@pytest.mark.parametrize("paradigm,options", [("psl", {"server_update": "lockstep"}), ("sglr", {})])
def test_huge_finite_activations_in_a_lockstep_step_drop_only_the_liar(daemons, pki, paradigm, options):
    out = _run(
        daemons,
        pki,
        "c3",
        ["--scale-acts", "1e30"],
        {"paradigm": paradigm, **options, "client_ids": ["c1", "c2", "c3"]},
        ["c1", "c2"],
    )
    print(paradigm, "state", out["state"], [(r["participants"], r["dropped"]) for r in out["records"]])
    assert out["state"] == "finished", out["error"] + out["server_log"][-3000:]
    assert _finite(out["model"])
    (record,) = out["records"]
    assert record["participants"] == ["c1", "c2"] and record["dropped"] == ["c3"], record
    assert record["misbehaved"]["c3"].startswith("poisoned compute: round 0"), record["misbehaved"]
    assert out["state_json"]["degraded"] is True and out["summary"]["degraded"] is True
