"""Faults with real processes: kill -9 of a client daemon mid-round, and of the server mid-run and before its first
checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from slperf.common.fsutil import TempName
from slperf.common.security.credentials import operator_channel_credentials
from slperf.operator import OperatorClient
from slperf.slserver.run_folder import RunFolder

pytestmark = pytest.mark.slow


def _config(**overrides) -> str:
    config = {
        "paradigm": "splitfed_v1",
        "clients": 2,
        "client_ids": ["c1", "c2"],
        "epochs": 4,
        "batch_size": 32,
        "lr": 0.05,
        "max_train_samples": 1200,
        "max_test_samples": 500,
        "seed": 2,
        "client_timeout": 60,
        "rejoin_timeout": 30,
    }
    config.update(overrides)
    return yaml.safe_dump(config)


def _operator(port, pki) -> OperatorClient:
    return OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")


# Parallel: c2 dies while both train. Sequential (a ring c1 -> c2): c1 dies during its own turn, which
# then passes on to c2.
@pytest.mark.parametrize("paradigm,victim_id", [("splitfed_v1", "c2"), ("vanilla", "c1")])
def test_client_killed_mid_round_is_dropped_and_rejoins(tmp_path, pki, daemons, paradigm, victim_id):
    runs = tmp_path / "runs"
    port = daemons.server(pki, runs)
    procs = {cid: daemons.client(port, cid, pki) for cid in ("c1", "c2")}
    victim = procs[victim_id]
    survivor = "c2" if victim_id == "c1" else "c1"
    op = _operator(port, pki)
    run_id = op.start_run(_config(paradigm=paradigm))
    killed = {}

    def on_round(record):
        if record["round"] == 0:
            victim.send_signal(signal.SIGKILL)  # round 1 is starting: the victim dies in the middle of it
            victim.wait()
            killed["at"] = time.monotonic()
            daemons.client(port, victim_id, pki, log_name=f"{victim_id}-restarted")

    status = op.follow(run_id, on_round)
    op.close()
    assert status.state == "finished", status.error
    records = RunFolder(runs / run_id).read_metrics()
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert records[0]["participants"] == ["c1", "c2"]
    assert records[1]["dropped"] == [victim_id] and records[1]["participants"] == [survivor]
    assert records[-1]["participants"] == ["c1", "c2"], "the restarted client must rejoin"
    assert records[-1]["test_accuracy"] > 0.5


def test_server_killed_mid_run_resumes_from_checkpoint(tmp_path, pki, daemons):
    config = _config(epochs=4)
    # The uninterrupted reference run.
    port = daemons.server(pki, tmp_path / "ref")
    daemons.client(port, "c1", pki, log_name="ref-c1")
    daemons.client(port, "c2", pki, log_name="ref-c2")
    op = _operator(port, pki)
    reference = op.follow(op.start_run(config, "reference"), lambda r: None)
    op.shutdown()
    op.close()
    daemons.server_proc.wait(timeout=30)
    assert reference.state == "finished"

    runs = tmp_path / "runs"
    port = daemons.server(pki, runs)
    daemons.client(port, "c1", pki)
    daemons.client(port, "c2", pki)
    op = _operator(port, pki)
    run_id = op.start_run(config, "interrupted")
    restarted = {}

    def on_round(record):
        if record["round"] == 1 and "at" not in restarted:
            daemons.server_proc.send_signal(signal.SIGKILL)
            daemons.server_proc.wait()
            restarted["at"] = time.monotonic()
            daemons.server(pki, runs, port=port)

    status = op.follow(run_id, on_round)
    op.close()
    assert restarted, "the server was never killed"
    assert status.state == "finished", status.error
    records = RunFolder(runs / run_id).read_metrics()
    assert [r["round"] for r in records] == [0, 1, 2, 3], "no completed round lost, none repeated"
    summary = json.loads(status.summary_json)
    ref_summary = json.loads(reference.summary_json)
    assert abs(summary["test_accuracy"] - ref_summary["test_accuracy"]) < 0.05, (summary, ref_summary)
    assert "resumes after round 1" in daemons.log("server")


def test_server_killed_before_its_first_checkpoint_restarts_the_run_from_round_0(tmp_path, pki, daemons):
    runs = tmp_path / "runs"
    port = daemons.server(pki, runs)
    daemons.client(port, "c1", pki)  # c2 is not there yet: the run waits for it, so no round can have started
    op = _operator(port, pki)
    run_id = op.start_run(_config(epochs=2, max_train_samples=600, max_test_samples=200), "early")
    for _kind, _payload, status in op.watch(run_id):
        if status.state == "waiting-for-clients":  # config.yaml is written before this state is published
            break
    daemons.server_proc.send_signal(signal.SIGKILL)
    daemons.server_proc.wait()
    folder = runs / run_id
    assert (folder / "config.yaml").exists() and not (folder / "checkpoint.pt").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = folder / str(TempName("checkpoint.pt", dead.pid, "0badf00d"))  # what a crash mid-save leaves
    leftover.write_bytes(b"half a checkpoint")

    daemons.server(pki, runs, port=port)
    daemons.client(port, "c2", pki)
    status = op.follow(run_id, lambda record: None)
    op.close()
    assert status.state == "finished", status.error + daemons.log("server")[-3000:]
    assert [r["round"] for r in RunFolder(folder).read_metrics()] == [0, 1]
    assert json.loads((folder / "state.json").read_text())["state"] == "finished"
    assert not leftover.exists()
    assert f"run {run_id} restarts from round 0" in daemons.log("server")
