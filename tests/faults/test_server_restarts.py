"""A client daemon never gives up on its own: a real `slperf client` process survives ten restarts of a real
`slperf server` (SIGKILL and SIGTERM in turn, mutual TLS on loopback) and rejoins after each.

Before the fix the daemon counted every reset after Welcome as a refused certificate and exited (code 2) at the
third restart, and a graceful stop (SIGTERM) crashed it with ``TypeError: object StreamStreamCall can't be used
in 'await' expression``. The test waits on the server's own log line for each rejoin, never on a sleep.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from slperf.federation import stop_processes
from tests.conftest import READY, child_env, client_args, slperf_cmd

pytestmark = pytest.mark.slow

RESTARTS = 10
DEADLINE = 30.0  # bounds each wait; a rejoin takes well under a second after the server is up


class _Lines:
    """A process's output lines, copied to ``log`` and put on a queue by a thread, so a test can wait for one."""

    def __init__(self, stream, log: Path):
        self.queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, args=(stream, log), daemon=True).start()

    def _drain(self, stream, log: Path) -> None:
        with open(log, "a") as out:
            for raw in stream:
                line = raw.decode(errors="replace")
                out.write(line)
                out.flush()
                self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, text: str) -> str:
        while True:
            try:
                line = self.queue.get(timeout=DEADLINE)
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {DEADLINE:.0f} s") from None
            if line is None:
                raise AssertionError(f"the process exited before {text!r}")
            if text in line:
                return line


def _server(pki: Path, runs: Path, port: int, log: Path) -> tuple[subprocess.Popen, int]:
    args = ["server", "--address", f"127.0.0.1:{port}", "--runs-dir", str(runs), "--certs", str(pki)]
    proc = subprocess.Popen(
        slperf_cmd(*args, "--torch-threads", "1"), stdout=subprocess.PIPE, stderr=open(log, "ab"), env=child_env()
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline().decode().strip()
    assert ready.startswith(READY), f"server did not start: {log.read_text(errors='replace')[-2000:]}"
    return proc, int(ready[len(READY) :])


def test_a_client_daemon_survives_ten_server_restarts_and_rejoins_each_time(tmp_path, pki):
    runs, server_log, client_log = tmp_path / "runs", tmp_path / "server.log", tmp_path / "c1.log"
    procs: list[subprocess.Popen] = []
    try:
        server, port = _server(pki, runs, 0, server_log)
        procs.append(server)
        client = subprocess.Popen(
            slperf_cmd(
                "client",
                *client_args(port, "c1", pki),
                "--state-dir",
                str(tmp_path / "state"),
                "--reconnect-delay",
                "0.05",
                "--max-reconnect-delay",
                "0.2",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
        procs.append(client)
        lines = _Lines(client.stdout, client_log)
        lines.wait_for("connected to")  # the client's own line: it got the server's Welcome
        for restart in range(RESTARTS):
            server.send_signal(signal.SIGKILL if restart % 2 == 0 else signal.SIGTERM)
            server.wait(timeout=DEADLINE)
            lines.wait_for("reconnecting in")  # it saw the server go, and goes on
            server, _ = _server(pki, runs, port, server_log)
            procs.append(server)
            lines.wait_for("connected to")
        assert client.poll() is None, client_log.read_text()
    finally:
        stop_processes(procs, grace=10)
    log = client_log.read_text(errors="replace")
    assert log.count("connected to 127.0.0.1") == RESTARTS + 1, log[-3000:]
    assert "Traceback" not in log and "TypeError" not in log, log[-3000:]
    assert "TLS handshake" not in log, log[-3000:]  # the server going away was never taken for a refusal
