"""The local federation as a supervisor, with real daemons over mutual TLS on loopback: a client daemon
SIGKILLed mid-run is restarted and rejoins, or (restarts off) stays gone while the run goes on without it; a
paradigm that cannot go on fails the run with the server's reason; the server's death ends the federation at
once with a clear error. The kill is triggered by the run's own progress (round 0's record), never a sleep."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from slperf.federation import (
    SUPERVISOR_LOG,
    ExitAction,
    Federation,
    FederationError,
    FederationHooks,
    RestartPolicy,
    run_federation,
)
from slperf.slserver.run_folder import RunFolder

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, **overrides) -> Path:
    config = {
        "paradigm": "splitfed_v1",
        "dataset": "mnist",
        "clients": 2,
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.05,
        "max_train_samples": 400,
        "max_test_samples": 200,
        "seed": 3,
        "client_timeout": 30,
        "rejoin_timeout": 30,
    }
    config.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class KillAfterRound0:
    """Hooks that SIGKILL one process of the federation once round 0's record has arrived."""

    def __init__(self, victim: str):
        self.victim = victim
        self.killed_pid: int | None = None
        self.killed_at: float | None = None

    def on_round(self, fed: Federation, record: dict) -> None:
        if record["round"] != 0:
            return
        proc = fed.server if self.victim == "server" else fed.clients[self.victim]
        assert proc is not None
        self.killed_pid = proc.pid
        self.killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)

    @property
    def hooks(self) -> FederationHooks:
        return FederationHooks(on_round=self.on_round)


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / SUPERVISOR_LOG).read_text().splitlines()]


def test_a_killed_client_daemon_is_restarted_and_rejoins(tmp_path):
    kill = KillAfterRound0("c2")
    said: list[str] = []
    summary = run_federation(
        _config(tmp_path), tmp_path / "runs", show_progress=False, echo=said.append, hooks=kill.hooks
    )
    run_dir = Path(summary["run_dir"])
    assert summary["supervisor"]["restarts"] == {"c2": 1} and summary["supervisor"]["lost"] == {}
    exited, restarted = _events(run_dir)
    assert (exited["process"], exited["event"], exited["signal"], exited["exit_code"]) == (
        "c2",
        "exited",
        "SIGKILL",
        -9,
    )
    assert (exited["action"], exited["pid"], exited["after_round"]) == (ExitAction.RESTART.value, kill.killed_pid, 0)
    assert (restarted["event"], restarted["restarts"]) == ("restarted", 1) and restarted["pid"] != kill.killed_pid
    assert any(line.startswith("c2 exited with signal SIGKILL after round 0; restarting") for line in said), said
    assert any(line.startswith("c2 restarted") for line in said), said

    records = RunFolder(run_dir).read_metrics()
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[0]["participants"] == ["c1", "c2"]
    assert "c2" in records[-1]["participants"] and records[-1]["per_client"]["c2"]["samples"] > 0, "c2 rejoined"
    for before, after in zip(records, records[1:]):  # the server's view: a round c2 sat out, then its return
        if "c2" in before["dropped"] and "c2" in after["participants"]:
            assert after["rejoined"] == ["c2"], after


def test_with_restarts_off_the_run_finishes_without_the_killed_client(tmp_path):
    kill = KillAfterRound0("c2")
    said: list[str] = []
    summary = run_federation(
        _config(tmp_path, rejoin_timeout=3),  # each round waits this long for c2 before it sits out
        tmp_path / "runs",
        show_progress=False,
        echo=said.append,
        hooks=kill.hooks,
        restart=RestartPolicy(enabled=False),
    )
    run_dir = Path(summary["run_dir"])
    assert summary["supervisor"]["restarts"] == {} and list(summary["supervisor"]["lost"]) == ["c2"]
    (exited,) = _events(run_dir)
    assert (exited["process"], exited["signal"], exited["action"]) == ("c2", "SIGKILL", ExitAction.NO_RESTART.value)
    assert any("c2 exited with signal SIGKILL after round 0, not restarted" in line for line in said), said
    records = RunFolder(run_dir).read_metrics()
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[0]["participants"] == ["c1", "c2"]
    for record in records[1:]:
        assert record["participants"] == ["c1"] and record["dropped"] == ["c2"], record
    assert summary["per_client"]["c1"]["samples"] == 3 * 200


def test_a_run_that_cannot_go_on_without_the_lost_client_fails_with_the_servers_reason(tmp_path):
    kill = KillAfterRound0("c1")
    with pytest.raises(FederationError) as failure:
        run_federation(
            _config(tmp_path, clients=1, rejoin_timeout=2),
            tmp_path / "runs",
            show_progress=False,
            echo=lambda line: None,
            hooks=kill.hooks,
            restart=RestartPolicy(enabled=False),
        )
    message = str(failure.value)
    assert " failed: " in message and "no client left" in message, message
    assert "client daemons lost: c1 exited with signal SIGKILL after round 0, not restarted" in message, message


def test_the_servers_death_ends_the_federation_at_once_with_a_clear_error(tmp_path):
    kill = KillAfterRound0("server")
    with pytest.raises(FederationError, match="the server exited with signal SIGKILL") as failure:
        run_federation(
            _config(tmp_path), tmp_path / "runs", show_progress=False, echo=lambda line: None, hooks=kill.hooks
        )
    assert kill.killed_at is not None
    waited = time.monotonic() - kill.killed_at
    # The follower alone would wait 180 s for a server restart; the client daemons are stopped too.
    assert waited < 30, f"{waited:.1f} s from the kill to the error: {failure.value}"
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.name != "logs"]
    (event,) = _events(run_dir)
    assert (event["process"], event["action"]) == ("server", ExitAction.FEDERATION_ENDS.value)
