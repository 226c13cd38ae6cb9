"""A local federation: one server and N client daemons as separate OS processes on loopback, over mutual
TLS with freshly made certificates; the run is started and followed with the operator credential, exactly
as an operator would on separate machines. This is the project's main job (`slperf federation CONFIG`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from slperf import pki
from slperf.common.config import RunConfig
from slperf.common.config_loader import load_config
from slperf.common.data import load_dataset
from slperf.common.security.credentials import operator_channel_credentials
from slperf.common.security.layout import ca_paths, client_paths
from slperf.operator import OperatorClient
from slperf.slserver.server import READY_PREFIX


class FederationError(Exception):
    pass


@dataclass(frozen=True)
class FederationHooks:
    """Callbacks for code that watches a federation's processes from outside (the benchmark's memory probe, a
    profiler that attaches to the daemons) without changing how they are started or stopped.

    ``on_started(federation)`` runs once the server is ready and every client daemon has been launched, so
    ``federation.server`` and ``federation.clients`` hold the live processes; if it raises, the start fails.
    ``before_stop(federation)`` runs at the start of ``stop``, while every child that is still running is
    alive (Linux forgets a process's peak memory when it exits); the children are stopped even if it raises.
    """

    on_started: Callable[[Federation], None] | None = None
    before_stop: Callable[[Federation], None] | None = None


@dataclass
class Federation:
    config: RunConfig
    out_dir: Path
    certs_dir: Path
    torch_threads: int = 1
    server: subprocess.Popen | None = None
    clients: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    logs_dir: Path | None = None
    hooks: FederationHooks = field(default_factory=FederationHooks)
    _stopping: bool = False

    def client_ids(self) -> list[str]:
        return self.config.participant_ids() or [f"c{i + 1}" for i in range(self.config.clients)]

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "slperf.cli", *args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(self.torch_threads))
        env["PYTHONUNBUFFERED"] = "1"
        if self.config.deterministic:  # cuBLAS reads it when it starts (see slperf.common.devices)
            env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        return env

    def start(self) -> None:
        self.logs_dir = self.out_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        pki.init_pki(self.certs_dir, overwrite=True)
        for cid in self.client_ids():
            pki.add_client(self.certs_dir, cid)
        server_log = open(self.logs_dir / "server.log", "wb")
        self.server = subprocess.Popen(
            self._cmd(
                "server",
                "--address",
                "127.0.0.1:0",
                "--certs",
                str(self.certs_dir),
                "--runs-dir",
                str(self.out_dir),
                "--torch-threads",
                str(self.torch_threads),
            ),
            stdout=subprocess.PIPE,
            stderr=server_log,
            env=self._env(),
        )
        assert self.server.stdout is not None
        line = self.server.stdout.readline().decode(errors="replace").strip()  # blocks until ready or exit
        if not line.startswith(READY_PREFIX):
            self.server.wait(timeout=30)
            raise FederationError(f"the server did not start: {self._tail('server')}")
        self.port = int(line[len(READY_PREFIX) :])
        for cid in self.client_ids():
            cert, key = client_paths(self.certs_dir, cid)
            log = open(self.logs_dir / f"{cid}.log", "wb")
            self.clients[cid] = subprocess.Popen(
                self._cmd(
                    "client",
                    "--server",
                    f"127.0.0.1:{self.port}",
                    "--id",
                    cid,
                    "--ca",
                    str(ca_paths(self.certs_dir)[0]),
                    "--cert",
                    str(cert),
                    "--key",
                    str(key),
                    "--server-name",
                    "localhost",
                    "--torch-threads",
                    str(self.torch_threads),
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
            )
        if self.hooks.on_started is not None:
            self.hooks.on_started(self)

    def operator(self) -> OperatorClient:
        return OperatorClient(
            f"127.0.0.1:{self.port}", operator_channel_credentials(self.certs_dir), server_name="localhost"
        )

    def _tail(self, name: str, lines: int = 5) -> str:
        path = (self.logs_dir or Path(".")) / f"{name}.log"
        try:
            text = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def watch_children(self, on_death: Callable[[str], None]) -> None:
        """A thread per child that reports an unexpected exit (blocking wait, no polling)."""

        def wait(name: str, proc: subprocess.Popen) -> None:
            code = proc.wait()
            if not self._stopping:
                on_death(f"{name} exited with code {code}: {self._tail(name)}")

        for cid, proc in self.clients.items():
            threading.Thread(target=wait, args=(cid, proc), daemon=True).start()
        if self.server is not None:
            threading.Thread(target=wait, args=("server", self.server), daemon=True).start()

    def stop(self) -> None:
        self._stopping = True
        try:
            if self.hooks.before_stop is not None:
                self.hooks.before_stop(self)
        finally:
            self._stop_children()

    def _stop_children(self) -> None:
        if self.server is not None and self.server.poll() is None:
            try:
                op = self.operator()
                op.shutdown(timeout=5)
                op.close()
            except Exception:  # the server may be gone already; terminate below covers it
                pass
        stop_processes([*self.clients.values(), *([self.server] if self.server else [])], grace=15)


def stop_processes(procs: Sequence[subprocess.Popen], grace: float) -> None:
    """SIGTERM to every process still running, then up to ``grace`` seconds each to exit before SIGKILL; their
    stdout pipes are closed. All are signalled first, so they shut down in parallel."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def run_federation(
    config_path: Path,
    out_dir: Path,
    *,
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
    hooks: FederationHooks | None = None,
) -> dict:
    """Runs the config on a fresh local federation to its end and returns the run's summary; ``hooks`` let a
    caller watch the processes (see FederationHooks)."""
    config, warnings = load_config(config_path)
    for warning in warnings:
        echo(f"warning: {warning}")
    load_dataset(config.dataset, config.data_dir)  # decode into the cache once, and fail early if missing
    config.client_ids = config.participant_ids() or [f"c{i + 1}" for i in range(config.clients)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    certs = Path(tempfile.mkdtemp(prefix="slperf-certs-"))
    fed = Federation(
        config=config,
        out_dir=out_dir,
        certs_dir=certs,
        torch_threads=config.torch_threads or 1,
        hooks=hooks or FederationHooks(),
    )
    failure: list[str] = []
    started = time.monotonic()
    try:
        fed.start()
        op = fed.operator()
        run_id = op.start_run(yaml.safe_dump(config.to_dict()))
        echo(
            f"run {run_id}: {config.paradigm} on {config.dataset}, {config.clients} clients over mutual TLS "
            f"(127.0.0.1:{fed.port}); logs in {fed.logs_dir}"
        )

        def on_death(message: str) -> None:
            failure.append(message)
            try:
                stopper = fed.operator()
                stopper.stop_run(run_id, timeout=10)
                stopper.close()
            except Exception:
                pass

        fed.watch_children(on_death)
        bar = None
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(total=config.epochs, desc=config.paradigm, unit="round", file=sys.stderr)

        def on_round(record: dict) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(acc=f"{100 * record['test_accuracy']:.2f}%")
            else:
                echo(f"round {record['round'] + 1}/{config.epochs}: test accuracy {100 * record['test_accuracy']:.2f}%")

        status = op.follow(run_id, on_round)
        if bar is not None:
            bar.close()
        op.close()
        if status.state != "finished":
            reason = "; ".join(failure) or status.error or status.state
            raise FederationError(f"run {run_id} {status.state}: {reason}")
        summary = json.loads(status.summary_json)
        summary["federation_seconds"] = time.monotonic() - started
        summary["run_dir"] = str(out_dir / run_id)
        return summary
    finally:
        fed.stop()
        shutil.rmtree(certs, ignore_errors=True)
