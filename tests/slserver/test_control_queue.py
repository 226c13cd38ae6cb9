"""The run queue and run ids through the Control service of a real server process (plaintext, on loopback): a start
while a run is going is queued in order and shown by `slperf status`, a stop removes a queued run, a taken
run id (running, queued, or a folder on disk) is ALREADY_EXISTS, and the next queued run starts when the one before
it ends. The runs wait for clients that never come, which keeps them going without any training."""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest
import yaml
from conftest import child_env, slperf_cmd

from slperf.operator import OperatorClient

pytestmark = pytest.mark.slow

CONFIG = yaml.safe_dump({"paradigm": "vanilla", "dataset": "mnist", "clients": 2, "connect_timeout": 600})


def _cli(*args: str) -> str:
    proc = subprocess.run(slperf_cmd(*args), capture_output=True, text=True, timeout=60, env=child_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_runs_queue_behind_the_current_one_and_taken_ids_are_refused(tmp_path, daemons):
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "old" / "state.json").write_text('{"error": "it failed", "state": "failed"}\n')
    port = daemons.server(None, runs)
    address = f"127.0.0.1:{port}"
    op = OperatorClient(address, None)
    try:
        assert op.start_run_reply(CONFIG, "first").queue_position == 0
        assert op.start_run_reply(CONFIG, "second").queue_position == 1
        assert op.start_run_reply(CONFIG, "third").queue_position == 2
        for taken in ("first", "second", "old"):
            with pytest.raises(grpc.RpcError) as refused:
                op.start_run(CONFIG, taken)
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS, taken
            assert f"run id '{taken}'" in refused.value.details()
        assert (runs / "old" / "state.json").read_text() == '{"error": "it failed", "state": "failed"}\n'

        shown = _cli("status", "--server", address, "--insecure")
        assert "run first: vanilla waiting-for-clients" in shown
        assert "queue: 2 run(s)" in shown and "1. second" in shown and "2. third" in shown

        assert op.stop_run("second")
        status = op.status()
        assert [q.run_id for q in status.queue] == ["third"] and status.queue[0].state == "queued"
        assert json.loads((runs / "second" / "state.json").read_text()) == {
            "state": "stopped",
            "error": "removed from the queue by the operator",
        }

        events = op.watch("third")  # a queued run can be followed: it reports each state it goes through
        assert next(events)[2].state == "queued"
        assert op.stop_run("first")
        states = []
        for _, payload, _status in events:
            states.append(payload["state"])
            if payload["state"] == "waiting-for-clients":
                break
        assert states == ["waiting-for-clients"], states
        status = op.status()
        assert status.run.run_id == "third" and status.run.state == "waiting-for-clients" and not status.queue
    finally:
        op.close()
