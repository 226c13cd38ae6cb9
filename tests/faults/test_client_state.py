"""Momentum survives a client restart: a real federation (server + 2 client daemons, vanilla SL, SGD with
momentum 0.9, 3 rounds) in which, after round 0, client c2's daemon *and* the server are killed (SIGKILL) and
restarted, ends with exactly the weights of an uninterrupted run at the same seed.

Killing the server too makes the schedule deterministic: the server resumes from its round-0 checkpoint
whatever it had done since, c2 (a new process) loads the state it saved entering round 1 from its state
directory, and c1 (which stayed up, and may have trained round 1 already) rewinds to its own saved state. Killing
only c2 would race with its next turn (it would sit out round 1 if it had not rejoined by then).

The comparison is ``torch.equal``: one torch thread per process, the ring in a fixed order and weights moved
bit-exactly (safetensors, the wire), so nothing may differ; before the fix c2 restarted with no momentum and
c1 kept momentum from a round the server had undone.
"""

from __future__ import annotations

import signal

import pytest
import torch
import yaml

from slperf.common.security.credentials import operator_channel_credentials
from slperf.operator import OperatorClient
from slperf.slserver.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

CONFIG = {
    "paradigm": "vanilla",
    "clients": 2,
    "client_ids": ["c1", "c2"],
    "epochs": 3,
    "batch_size": 16,
    "lr": 0.05,
    "momentum": 0.9,
    "max_train_samples": 128,
    "max_test_samples": 64,
    "seed": 5,
    "client_timeout": 60,
    "rejoin_timeout": 60,
}


def _operator(port, pki) -> OperatorClient:
    return OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")


def _final_weights(runs, run_id) -> dict[str, torch.Tensor]:
    model = load_checkpoint(runs / run_id / "checkpoint.pt")["model"]
    return {f"{segment}.{name}": t for segment, state in model.items() for name, t in state.items()}


def test_momentum_survives_a_client_restart_weights_equal_an_uninterrupted_run(tmp_path, pki, daemons):
    text = yaml.safe_dump(CONFIG)
    ref_runs = tmp_path / "ref-runs"
    port = daemons.server(pki, ref_runs)
    ref_clients = [
        daemons.client(port, cid, pki, "--state-dir", str(tmp_path / "ref-state"), log_name=f"ref-{cid}")
        for cid in ("c1", "c2")
    ]
    op = _operator(port, pki)
    reference = op.follow(op.start_run(text, "reference"), lambda record: None)
    op.shutdown()
    op.close()
    daemons.server_proc.wait(timeout=30)
    for proc in ref_clients:
        proc.terminate()
        proc.wait(timeout=30)
    assert reference.state == "finished", reference.error

    runs, state = tmp_path / "runs", str(tmp_path / "state")
    port = daemons.server(pki, runs)
    daemons.client(port, "c1", pki, "--state-dir", state)
    victim = daemons.client(port, "c2", pki, "--state-dir", state)
    op = _operator(port, pki)
    run_id = op.start_run(text, "interrupted")
    killed = {}

    def on_round(record):
        if record["round"] == 0 and not killed:
            daemons.server_proc.send_signal(signal.SIGKILL)
            victim.send_signal(signal.SIGKILL)
            daemons.server_proc.wait()
            victim.wait()
            killed["round"] = 0
            daemons.server(pki, runs, port=port)
            daemons.client(port, "c2", pki, "--state-dir", state, log_name="c2-restarted")

    status = op.follow(run_id, on_round)
    op.close()
    assert killed, "nothing was killed"
    assert status.state == "finished", status.error + daemons.log("server")[-3000:]
    assert "resumed the training state entering round 1" in daemons.log("c2-restarted")

    expected, got = _final_weights(ref_runs, "reference"), _final_weights(runs, run_id)
    assert set(expected) == set(got)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    # A finished run can never be resumed: its round states are gone; only its final segments stay (for predict).
    kept = sorted(p.name for p in (tmp_path / "state" / "runs" / run_id).rglob("*") if p.is_file())
    assert not [name for name in kept if name.startswith("round-")], kept
    assert "final.safetensors" in kept, kept
