"""The local federation's supervision of its children, with stand-in processes (no server, no torch): a client
daemon that exits is restarted with backoff up to ``max_restarts`` and then stays down, restarts can be turned
off, ``stop`` cancels a pending restart, the server's exit is reported, and every event is recorded."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slperf.common.config_loader import config_from_mapping
from slperf.federation import (
    ExitAction,
    Federation,
    RestartPolicy,
    SupervisorLog,
    describe_exit,
)

WAIT = 30.0  # bounds each wait for a message; the messages themselves are the synchronisation
FOREVER = "import signal; signal.pause()"  # a daemon that runs until it is signalled


class StandInFederation(Federation):
    """A federation whose client daemons are ``python -c SCRIPT`` (its command is the only thing changed)."""

    script: str = FOREVER

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-c", self.script]


def federation(tmp_path: Path, script: str, restart: RestartPolicy) -> tuple[StandInFederation, queue.Queue[str]]:
    config, _ = config_from_mapping({"dataset": "mnist", "clients": 1})
    said: queue.Queue[str] = queue.Queue()
    fed = StandInFederation(
        config=config, out_dir=tmp_path, certs_dir=tmp_path / "certs", restart=restart, say=said.put
    )
    fed.script = script
    fed.logs_dir = tmp_path / "logs"
    fed.logs_dir.mkdir(parents=True)
    return fed, said


def next_message(said: queue.Queue[str]) -> str:
    return said.get(timeout=WAIT)


def stop(fed: Federation) -> None:
    fed.stop()
    assert all(proc.poll() is not None for proc in fed.clients.values())


def test_the_backoff_doubles_up_to_its_cap():
    policy = RestartPolicy(backoff_seconds=1.0, backoff_max_seconds=5.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="restart policy"):
        RestartPolicy(max_restarts=-1)


def test_exit_codes_are_described_by_signal_or_code():
    assert describe_exit(-9) == ("signal SIGKILL", "SIGKILL")
    assert describe_exit(2) == ("code 2", None)


def test_a_crashing_daemon_is_restarted_max_restarts_times_then_stays_down(tmp_path):
    fed, said = federation(tmp_path, "import sys; sys.exit(3)", RestartPolicy(max_restarts=2, backoff_seconds=0.01))
    fed.supervisor.attach(tmp_path / "run" / "supervisor.jsonl")
    fed.clients["c1"] = fed._spawn_client("c1")
    try:
        fed.supervise(on_server_exit=said.put)
        messages = [next_message(said) for _ in range(5)]
    finally:
        stop(fed)
    assert "c1 exited with code 3" in messages[0] and "restart 1 of 2" in messages[0]
    assert messages[1].startswith("c1 restarted") and "restart 1 of 2" in messages[1]
    assert "restart 2 of 2" in messages[2] and messages[3].startswith("c1 restarted")
    assert "not restarted again (2 of 2 used)" in messages[4] and "goes on without it" in messages[4]
    assert fed.restarts == {"c1": 2} and list(fed.lost) == ["c1"]
    lines = (tmp_path / "run" / "supervisor.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [(e["process"], e["event"], e.get("action"), e["restarts"]) for e in events] == [
        ("c1", "exited", ExitAction.RESTART.value, 0),
        ("c1", "restarted", None, 1),
        ("c1", "exited", ExitAction.RESTART.value, 1),
        ("c1", "restarted", None, 2),
        ("c1", "exited", ExitAction.GAVE_UP.value, 2),
    ]
    assert all(e["exit_code"] == 3 and e["signal"] is None for e in events if e["event"] == "exited")
    assert len({e["pid"] for e in events}) == 3, "every restart is a new process"
    assert (tmp_path / "logs" / "c1.log").read_text().count("--- slperf federation: restart") == 2


def test_with_restarts_off_a_killed_daemon_stays_down_and_is_recorded_as_lost(tmp_path):
    fed, said = federation(tmp_path, FOREVER, RestartPolicy(enabled=False))
    fed.clients["c1"] = victim = fed._spawn_client("c1")
    try:
        fed.supervise(on_server_exit=said.put)
        victim.send_signal(signal.SIGKILL)
        message = next_message(said)
    finally:
        stop(fed)
    assert "c1 exited with signal SIGKILL" in message and "restarts are off" in message
    assert fed.clients["c1"] is victim and fed.restarts == {}
    (event,) = fed.supervisor.events
    assert (event["event"], event["action"], event["signal"], event["exit_code"]) == (
        "exited",
        ExitAction.NO_RESTART.value,
        "SIGKILL",
        -9,
    )


def test_stop_cancels_a_pending_restart(tmp_path):
    fed, said = federation(tmp_path, FOREVER, RestartPolicy(backoff_seconds=600, backoff_max_seconds=600))
    fed.clients["c1"] = victim = fed._spawn_client("c1")
    fed.supervise(on_server_exit=said.put)
    victim.send_signal(signal.SIGKILL)
    assert "restarting it in 600 s" in next_message(said)
    started = time.monotonic()
    stop(fed)
    assert time.monotonic() - started < 20, "stop must not wait out the backoff"
    assert fed.clients["c1"] is victim and fed.restarts == {}
    assert [e["event"] for e in fed.supervisor.events] == ["exited"]


def test_a_restarted_daemon_is_supervised_again_and_stop_ends_it_without_a_restart(tmp_path):
    fed, said = federation(tmp_path, FOREVER, RestartPolicy(backoff_seconds=0.01))
    fed.clients["c1"] = first = fed._spawn_client("c1")
    fed.supervise(on_server_exit=said.put)
    first.send_signal(signal.SIGKILL)
    assert "restart 1 of 3" in next_message(said)
    assert next_message(said).startswith("c1 restarted")
    second = fed.clients["c1"]
    assert second is not first and second.poll() is None
    second.send_signal(signal.SIGKILL)
    assert "restart 2 of 3" in next_message(said)
    assert next_message(said).startswith("c1 restarted")
    stop(fed)
    assert said.empty(), "an exit caused by stop is neither restarted nor reported"
    assert fed.restarts == {"c1": 2}


def test_the_servers_exit_is_reported_and_one_caused_by_stop_is_not(tmp_path):
    fed, said = federation(tmp_path, FOREVER, RestartPolicy())
    fed.server = subprocess.Popen([sys.executable, "-c", FOREVER])
    try:
        fed.supervise(on_server_exit=said.put)
        fed.server.send_signal(signal.SIGKILL)
        assert next_message(said).startswith("the server exited with signal SIGKILL")
    finally:
        stop(fed)
    (event,) = fed.supervisor.events
    assert (event["process"], event["action"]) == ("server", ExitAction.FEDERATION_ENDS.value)

    fed, said = federation(tmp_path / "again", FOREVER, RestartPolicy())
    fed.server = subprocess.Popen([sys.executable, "-c", FOREVER])
    fed.supervise(on_server_exit=said.put)
    stop(fed)  # returns once the watchers have seen the exits
    assert said.empty() and fed.supervisor.events == []


def test_events_before_the_run_folder_is_known_are_written_once_it_is(tmp_path):
    log = SupervisorLog()
    log.add({"event": "exited", "process": "c1"})
    path = tmp_path / "run" / "supervisor.jsonl"
    assert not path.exists()
    log.attach(path)
    log.add({"event": "restarted", "process": "c1"})
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["exited", "restarted"]


def test_the_cli_refuses_max_restarts_with_no_restart(tmp_path):
    from click.testing import CliRunner

    from slperf.cli import main

    result = CliRunner().invoke(
        main, ["federation", str(tmp_path / "config.yaml"), "--no-restart", "--max-restarts", "2"]
    )
    assert result.exit_code == 2
    assert "--max-restarts means nothing with --no-restart" in result.output
