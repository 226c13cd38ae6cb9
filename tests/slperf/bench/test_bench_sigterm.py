"""SIGTERM to `slperf bench --executor ray` stops it as Ctrl-C does: the cell in flight is cancelled, and the local
Ray instance it started goes with it (Python's default SIGTERM left Ray's agents running, reparented to init)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import child_env, slperf_cmd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now, from /proc (children first found by their parent's id)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _still_running_after(pids: set[int], seconds: float) -> list[int]:
    """The processes of ``pids`` that have not exited within ``seconds`` (waited on with pidfds: each wait ends
    when its process exits, no polling)."""
    deadline = time.monotonic() + seconds
    left = []
    for pid in sorted(pids):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
        if not ready:
            left.append(pid)
    return left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_cancels_the_suite_and_takes_the_local_ray_instance_down(tmp_path):
    pytest.importorskip("ray")
    suite = tmp_path / "long.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "long",
                "base": {
                    "model": "lenet",
                    "epochs": 50,
                    "batch_size": 8,
                    "max_train_samples": 3000,
                    "max_test_samples": 100,
                    "torch_threads": 1,
                    "backend": "sim",
                },
                "matrix": {
                    "paradigms": ["vanilla"],
                    "datasets": ["mnist"],
                    "partitions": ["homo"],
                    "clients": [2],
                    "seeds": [0],
                },
                "centralized": False,
            }
        )
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        slperf_cmd("bench", "--suite", str(suite), "--out", str(out), "--no-progress", "--executor", "ray"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=child_env(),
        text=True,
    )
    seen = []
    try:
        for line in proc.stdout:  # the cell runs once its worker says so (Ray's log forwarding)
            seen.append(line)
            if "round 1/50" in line or "simulating vanilla" in line:
                break
        assert proc.poll() is None, "".join(seen)
        below = _descendants(proc.pid)
        assert below, "the local Ray instance runs below the bench process"
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(seen) + rest
    assert proc.returncode != 0, output
    assert "interrupted during vanilla/mnist/homo/c2/s0" in output, output[-3000:]
    left = _still_running_after(below, 30.0)  # Ray's node processes stop as ray.shutdown returns, or soon after
    for pid in left:  # cleanup whatever the assertion below reports
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes of the Ray instance outlived the bench: {left}"
