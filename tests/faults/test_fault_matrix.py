"""One client failing at every point of a run: killed, stalled or cut off, at set-up, mid-training, between
phases, during a weight transfer and during evaluation, across the paradigm families that can go on without a
client. Every run must end ``finished``; a killed (and restarted) or cut-off client is back for the last round, a
stalled one is dropped and the others go on. The faults are triggered by the client's own messages
(``tests.faults.chaos_client``), never by timing.

By default each (point, action) pair runs once, the families taking turns; ``SLPERF_FAULT_MATRIX=full`` runs every
family at every pair, and ``SLPERF_FAULT_REPEATS=N`` repeats the whole matrix N times.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import yaml

from slperf.common.security.credentials import operator_channel_credentials
from slperf.operator import OperatorClient
from slperf.slserver.run_folder import RunFolder
from tests.conftest import child_env, client_args

pytestmark = pytest.mark.slow

# The first client fails: paradigms that evaluate through one client pick it, sequential ones start with it.
VICTIM, HONEST = "c1", "c2"
POINTS = ("setup", "train", "between", "weights", "eval")
FAMILIES = ("vanilla", "splitfed_v1", "ushaped", "fedavg")
EVAL_THROUGH_VICTIM = ("splitfed_v1", "fedavg")
CONFIG = {
    "clients": 2,
    "client_ids": ["c1", "c2"],
    "epochs": 3,
    "batch_size": 16,
    "eval_batch_size": 32,
    "lr": 0.05,
    "max_train_samples": 96,
    "max_test_samples": 64,
    "seed": 5,
    "client_timeout": 5,
    "connect_timeout": 120,
    "rejoin_timeout": 20,
}


def _scenarios(action: str) -> list[tuple[str, str]]:
    full = os.environ.get("SLPERF_FAULT_MATRIX") == "full"
    offset = ("kill", "stall", "cut").index(action)
    pairs = []
    for i, point in enumerate(POINTS):
        # Sequential rings (vanilla, U-shaped) evaluate through their last client, never the victim.
        families = EVAL_THROUGH_VICTIM if point == "eval" else FAMILIES
        pairs += [(point, f) for f in (families if full else (families[(i + offset) % len(families)],))]
    return pairs * int(os.environ.get("SLPERF_FAULT_REPEATS", "1"))


class Victim:
    """The failing client's process; after a kill it is started again, as a supervisor would (on its exit, not after
    a delay)."""

    def __init__(self, daemons, port: int, pki, point: str, action: str, name: str):
        self.daemons, self.port, self.pki, self.name = daemons, port, pki, name
        self.marker = daemons.tmp / f"{name}.fired"
        cmd = [sys.executable, "-m", "tests.faults.chaos_client", "--at", point, "--action", action]
        cmd += ["--marker", str(self.marker), "--", *client_args(port, VICTIM, pki)]
        self.proc = self._start(cmd, name)
        self.restarted: subprocess.Popen | None = None
        self._watch = threading.Thread(target=self._restart_on_kill, daemon=True)
        self._watch.start()

    def _start(self, cmd: list[str], name: str) -> subprocess.Popen:
        log = open(self.daemons.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env())
        self.daemons.procs.append(proc)
        return proc

    def _restart_on_kill(self) -> None:
        if self.proc.wait() == -9:
            self.restarted = self.daemons.client(self.port, VICTIM, self.pki, log_name=f"{self.name}-restarted")

    def stop(self) -> None:
        for proc in (self.proc, self.restarted):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        self._watch.join(timeout=30)
        if self.restarted is not None and self.restarted.poll() is None:
            self.restarted.kill()
            self.restarted.wait()


@pytest.mark.parametrize("action", ["kill", "stall", "cut"])
def test_one_client_failing_at_any_point_of_a_run_never_fails_the_run(tmp_path, pki, daemons, action):
    runs = tmp_path / "runs"
    port = daemons.server(pki, runs, "--write-timeout", "5")
    daemons.client(port, HONEST, pki)
    op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")
    wrong = []
    try:
        for n, (point, family) in enumerate(_scenarios(action)):
            run_id = f"{action}-{point}-{family}-{n}"
            victim = Victim(daemons, port, pki, point, action, run_id)
            try:
                # A stalled client never comes back: the rounds after its fault need not wait long for it.
                rejoin = {"rejoin_timeout": 3} if action == "stall" else {}
                config = yaml.safe_dump({**CONFIG, "paradigm": family, **rejoin})
                status = op.follow(op.start_run(config, run_id), lambda record: None)
            finally:
                victim.stop()
            records = RunFolder(runs / run_id).read_metrics()
            fired = victim.marker.exists()
            last = records[-1] if records else {}
            expected_dropped = [VICTIM] if action == "stall" else []
            if status.state != "finished" or not fired or last.get("dropped") != expected_dropped:
                wrong.append((run_id, status.state, status.error, fired, [r["dropped"] for r in records]))
    finally:
        op.close()
    assert not wrong, (wrong, daemons.log("server")[-4000:])
