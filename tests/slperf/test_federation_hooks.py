"""The local federation launcher's hooks: ``before_stop`` runs while the children are still alive, and the
children are stopped even when a hook fails (the benchmark's memory probe relies on both)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slperf.common.config_loader import config_from_mapping
from slperf.federation import Federation, FederationHooks


def waiting_child() -> subprocess.Popen:
    """A child that says it is up, then waits for stdin (it only ends when the launcher ends it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    return proc


def launcher(tmp_path: Path, hooks: FederationHooks) -> Federation:
    config, _ = config_from_mapping({"dataset": "mnist", "clients": 2})
    return Federation(config=config, out_dir=tmp_path, certs_dir=tmp_path / "certs", hooks=hooks)


def test_before_stop_sees_every_child_alive_then_they_are_stopped(tmp_path):
    alive: list[dict[str, bool]] = []
    fed = launcher(
        tmp_path,
        FederationHooks(before_stop=lambda f: alive.append({cid: p.poll() is None for cid, p in f.clients.items()})),
    )
    fed.clients = {"c1": waiting_child(), "c2": waiting_child()}
    try:
        fed.stop()
        assert alive == [{"c1": True, "c2": True}]
        assert all(p.poll() is not None for p in fed.clients.values())
    finally:
        for proc in fed.clients.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_failing_before_stop_still_stops_the_children(tmp_path):
    def broken(_fed: Federation) -> None:
        raise RuntimeError("hook failed")

    fed = launcher(tmp_path, FederationHooks(before_stop=broken))
    fed.clients = {"c1": waiting_child()}
    try:
        with pytest.raises(RuntimeError, match="hook failed"):
            fed.stop()
        assert fed.clients["c1"].poll() is not None
    finally:
        for proc in fed.clients.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_federation_without_hooks_stops_as_before(tmp_path):
    fed = launcher(tmp_path, FederationHooks())
    fed.clients = {"c1": waiting_child()}
    fed.stop()
    assert fed.clients["c1"].poll() is not None
