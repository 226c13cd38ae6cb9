"""Shared fixtures: a fresh PKI, and real server / client daemon processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from slperf.common.security.credentials import operator_channel_credentials
from slperf.common.security.layout import ca_paths, client_paths
from slperf.federation import stop_processes
from slperf.pki import add_client, init_pki

READY = "SLPERF_READY port="


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Client daemons the tests start (and their children, which inherit the environment) keep their training
    state in a folder of this test session, never in the user's ``~/.local/state/slperf``."""
    os.environ["SLPERF_STATE"] = str(tmp_path_factory.mktemp("client-state"))


@pytest.fixture(autouse=True)
def _sigint_handler_left_as_found(request: pytest.FixtureRequest):
    """A test that leaves its own SIGINT handler installed changes what Ctrl-C does in every later test (a Ray
    Ctrl-C test once saw its interrupt swallowed in whole-suite runs only), so the test that did it fails here."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"{request.node.nodeid} left a SIGINT handler installed ({after!r}, was {before!r})")


def slperf_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "slperf.cli", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def client_args(port: int, client_id: str, certs: Path | None, *, cert_id: str | None = None) -> list[str]:
    """The ``slperf client`` arguments of a daemon dialling a server on loopback: mutual TLS with the certificate of
    ``cert_id`` (default: its own id) from ``certs``, or plaintext when ``certs`` is None."""
    args = ["--server", f"127.0.0.1:{port}", "--id", client_id, "--torch-threads", "1"]
    if certs is not None:
        cert, key = client_paths(certs, cert_id or client_id)
        args += ["--ca", str(ca_paths(certs)[0]), "--cert", str(cert), "--key", str(key), "--server-name", "localhost"]
    return args


@dataclass
class Daemons:
    """Processes a test started; all are terminated (then killed) at teardown, even when the test fails."""

    tmp: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    server_proc: subprocess.Popen | None = None

    def server(self, certs: Path | None, runs: Path, *extra: str, port: int = 0) -> int:
        args = ["server", "--address", f"127.0.0.1:{port}", "--runs-dir", str(runs), "--torch-threads", "1", *extra]
        args += ["--certs", str(certs)] if certs else ["--insecure"]
        log = open(self.tmp / "server.log", "ab")
        proc = subprocess.Popen(slperf_cmd(*args), stdout=subprocess.PIPE, stderr=log, env=child_env())
        self.procs.append(proc)
        self.server_proc = proc
        line = proc.stdout.readline().decode().strip()
        assert line.startswith(READY), f"server did not start: {(self.tmp / 'server.log').read_text()[-2000:]}"
        return int(line[len(READY) :])

    def client(
        self,
        port: int,
        client_id: str,
        certs: Path | None,
        *extra: str,
        cert_id: str | None = None,
        log_name: str | None = None,
    ) -> subprocess.Popen:
        args = ["client", *client_args(port, client_id, certs, cert_id=cert_id), *extra]
        log = open(self.tmp / f"{log_name or client_id}.log", "wb")
        proc = subprocess.Popen(slperf_cmd(*args), stdout=log, stderr=subprocess.STDOUT, env=child_env())
        self.procs.append(proc)
        return proc

    def federate(
        self, certs: Path, config: dict[str, Any], *server_args: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A server (started with ``server_args``) and the config's ``client_ids`` as daemons over mutual TLS, the
        config run to its end by the operator; returns the run's summary and per-round records (it must finish)."""
        from slperf.operator import OperatorClient
        from slperf.slserver.run_folder import RunFolder

        runs = self.tmp / "runs"
        port = self.server(certs, runs, *server_args)
        for cid in config["client_ids"]:
            self.client(port, cid, certs)
        op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(certs), server_name="localhost")
        try:
            run_id = op.start_run(yaml.safe_dump(config))
            status = op.follow(run_id, lambda record: None)
        finally:
            op.close()
        assert status.state == "finished", status.error + self.log("server")[-3000:]
        return json.loads(status.summary_json), RunFolder(runs / run_id).read_metrics()

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        stop_processes(self.procs, grace=10)


@pytest.fixture
def daemons(tmp_path):
    d = Daemons(tmp_path)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def pki(tmp_path) -> Path:
    certs = tmp_path / "certs"
    init_pki(certs)
    for cid in ("c1", "c2", "c3"):
        add_client(certs, cid)
    return certs


# Folders whose every test starts real processes (daemons over gRPC, fault injection, containers): `slow` by where
# they live, so `make test-fast` (-m "not slow") never starts a daemon. Elsewhere a test that does is slow by its
# fixture (`daemons`) or by its own mark.
SLOW_FOLDERS = ("e2e", "faults")
SLOW_FIXTURES = {"daemons", "local_ray"}  # real daemons; a local Ray instance (its own processes)


def _mark_slow(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        folder = Path(str(item.path)).relative_to(tests).parts[0]
        if folder in SLOW_FOLDERS or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects by mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start real processes are ``slow`` (see SLOW_FOLDERS); tests marked ``cuda`` skip, saying why, on a
    machine without a CUDA device (CI, CPU-only torch)."""
    _mark_slow(items)
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA device visible"
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU ({build}, torch {torch.__version__})")
    for item in marked:
        item.add_marker(skip)
