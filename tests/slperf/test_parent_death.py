"""A daemon started by a federation ends when its parent is SIGKILLed (slperf.parent_death), so nothing is left
holding ports after a killed benchmark or CI job."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from slperf import parent_death, pki
from slperf.slserver.server import READY_PREFIX

# Runs as a subreaper (PR_SET_CHILD_SUBREAPER), so the orphaned daemon is re-parented to it and it can wait for
# the daemon's exit directly: no polling of /proc. It starts PARENT, reads the daemon's ready line and PARENT's
# "pid N" line from the pipe they share, SIGKILLs PARENT and prints the daemon's exit code.
REAPER = r"""
import ctypes, os, signal, subprocess, sys
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0
prefix, code, daemon = sys.argv[1], sys.argv[2], sys.argv[3:]
parent = subprocess.Popen([sys.executable, "-c", code, *daemon], stdout=subprocess.PIPE)
pid, ready = None, False
while pid is None or not ready:
    line = parent.stdout.readline().decode()
    if not line:
        sys.exit("the daemon or its parent ended before both were up")
    pid = int(line.split()[1]) if line.startswith("pid ") else pid
    ready = ready or line.startswith(prefix)
os.kill(parent.pid, signal.SIGKILL)
parent.wait()
_, status = os.waitpid(pid, 0)
print("exit", os.waitstatus_to_exitcode(status), flush=True)
"""

# Names itself in SLPERF_EXIT_WITH_PARENT as slperf.federation does, starts the daemon (stdout shared with the
# reaper, so the daemon never writes into a closed pipe) and waits to be killed.
PARENT = r"""
import os, signal, subprocess, sys
env = dict(os.environ, SLPERF_EXIT_WITH_PARENT=str(os.getpid()))
child = subprocess.Popen(sys.argv[1:], env=env)
print("pid", child.pid, flush=True)
signal.pause()
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_daemon_stops_cleanly_when_its_parent_is_sigkilled(tmp_path):
    certs = tmp_path / "certs"
    pki.init_pki(certs)
    daemon = [sys.executable, "-m", "slperf.cli", "server", "--address", "127.0.0.1:0", "--certs", str(certs)]
    daemon += ["--runs-dir", str(tmp_path / "runs")]
    reaper = subprocess.Popen(
        [sys.executable, "-c", REAPER, READY_PREFIX, PARENT, *daemon],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: nothing of it outlives a failed test
    )
    try:
        out, err = reaper.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(reaper.pid, signal.SIGKILL)
        reaper.wait()
    proc = subprocess.CompletedProcess(reaper.args, reaper.returncode, out, err)
    assert proc.returncode == 0, proc.stderr
    # 0: the daemon got SIGTERM and stopped as it does for an operator's SIGTERM (not killed, not left running).
    assert proc.stdout.strip().splitlines()[-1] == "exit 0", proc.stdout + proc.stderr


def test_without_the_variable_nothing_is_armed(monkeypatch):
    monkeypatch.delenv(parent_death.ENV, raising=False)
    parent_death.exit_with_parent()  # a daemon an operator starts by hand: a no-op


def test_a_parent_that_is_already_gone_ends_the_child_at_once():
    # In a child of its own: arming the signal in the test process would bind pytest to its parent.
    code = "from slperf.parent_death import exit_with_parent; exit_with_parent(); print('went on')"
    env = dict(os.environ, **{parent_death.ENV: str(os.getpid() + 1_000_000)})  # not the child's parent
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "has already ended" in proc.stderr and "went on" not in proc.stdout, proc


def test_the_federation_names_itself_to_its_children(tmp_path):
    from slperf.common.config import RunConfig
    from slperf.federation import Federation

    fed = Federation(RunConfig(), tmp_path, tmp_path / "certs")
    assert fed._env()[parent_death.ENV] == str(os.getpid())
