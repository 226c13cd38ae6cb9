"""A local federation: one server and N client daemons as separate OS processes on loopback, over mutual
TLS with freshly made certificates; the run is started and followed with the operator credential, exactly
as an operator would on separate machines. This is the project's main job (`slperf federation CONFIG`).

The launcher supervises its client daemons the way systemd would on a silo: a daemon that exits during the
run is started again after a backoff, a bounded number of times (``RestartPolicy``). Meanwhile the server
drops that client and sets it up again when it reconnects, so one dead process never stops the run; with
restarts off the client simply stays gone and the server goes on without it where the paradigm can. Every
exit and restart is written to ``<run folder>/supervisor.jsonl`` and shown on the progress output. Only the
server's death ends the federation, with an error that says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import yaml

from slperf import parent_death, pki
from slperf.common.client_resources import client_resources
from slperf.common.config import RunConfig, network_spec
from slperf.common.config_loader import load_config
from slperf.common.data import load_dataset
from slperf.common.fsutil import atomic_write
from slperf.common.security.credentials import operator_channel_credentials
from slperf.common.security.layout import ca_paths, client_paths
from slperf.containers import ContainerClients, ContainerError, ContainerProcess
from slperf.fedserver.server import READY_PREFIX as FED_READY_PREFIX
from slperf.operator import OperatorClient
from slperf.slserver.server import READY_PREFIX

if TYPE_CHECKING:  # imported where used: an unshaped run never loads it
    from slperf.netshape.clients import LinkMeasurement, ShapedClients


class FederationError(Exception):
    pass


SUPERVISOR_LOG = "supervisor.jsonl"  # in the run folder, beside the server's metrics.jsonl


@dataclass(frozen=True)
class RestartPolicy:
    """What the launcher does when a client daemon exits during the run.

    ``enabled`` off: the client stays down (the server goes on without it where the paradigm can). On: it is
    started again after ``backoff_seconds``, doubled for each further restart of the same client up to
    ``backoff_max_seconds``, at most ``max_restarts`` times; after that it stays down. A crash loop thus costs a
    bounded number of starts, and a daemon that dies once is back within about a second.
    """

    enabled: bool = True
    max_restarts: int = 3
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.backoff_seconds < 0 or self.backoff_max_seconds < 0:
            raise ValueError(f"a restart policy needs counts and delays >= 0, got {self}")

    def delay(self, restart: int) -> float:
        """Seconds to wait before the ``restart``-th (1-based) start of one client."""
        return min(self.backoff_seconds * 2 ** (restart - 1), self.backoff_max_seconds)


class ExitAction(Enum):
    """What the launcher did about a child that exited during the run (the ``action`` of an ``exited`` line)."""

    RESTART = "restart"
    NO_RESTART = "no_restart"  # restarts are off: the client stays down
    GAVE_UP = "gave_up"  # max_restarts used: the client stays down
    FEDERATION_ENDS = "federation_ends"  # the server: nothing can go on without it


def describe_exit(code: int) -> tuple[str, str | None]:
    """``("signal SIGKILL", "SIGKILL")`` for a child killed by a signal (Popen's negative code), else
    ``("code 2", None)``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"signal {name}", name
    return f"code {code}", None


class SupervisorLog:
    """The launcher's record of its children's exits and restarts, one JSON object a line.

    Events that happen before the run has a folder (a daemon dying while the run is being started) are kept
    and written once ``attach`` names the file; every later event rewrites the whole (small) file atomically,
    so a reader never sees a torn line. Thread-safe: each child's watcher adds to it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self.path: Path | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def attach(self, path: Path) -> None:
        with self._lock:
            self.path = path
            self._write()

    def add(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in self._events))


@dataclass(frozen=True)
class FederationHooks:
    """Callbacks for code that watches a federation's processes from outside (the benchmark's memory probe, a
    profiler that attaches to the daemons, a test that kills a daemon at a known point) without changing how
    they are started or stopped.

    ``on_started(federation)`` runs once the server is ready and every client daemon has been launched, so
    ``federation.server`` and ``federation.clients`` hold the live processes; if it raises, the start fails.
    ``on_round(federation, record)`` runs in the follower as each round's record arrives (the server is then
    already in the next round); if it raises, the federation stops with that error.
    ``before_stop(federation)`` runs at the start of ``stop``, while every child that is still running is
    alive (Linux forgets a process's peak memory when it exits); the children are stopped even if it raises.
    """

    on_started: Callable[[Federation], None] | None = None
    on_round: Callable[[Federation, dict], None] | None = None
    before_stop: Callable[[Federation], None] | None = None


class ClientPlacement(Protocol):
    """Where a client daemon runs and which address it dials (default: this host's loopback). The shaped network
    (``slperf.netshape.clients.ShapedClients``) runs each one in a namespace of its own behind its link."""

    def client_endpoint(self, client_id: str, server_port: int) -> tuple[list[str], str]:
        """The argv prefix to start the daemon with and the HOST:PORT it dials the server at."""
        ...


@dataclass
class Federation:
    config: RunConfig
    out_dir: Path
    certs_dir: Path
    torch_threads: int = 1
    server: subprocess.Popen | None = None
    clients: dict[str, subprocess.Popen | ContainerProcess] = field(default_factory=dict)
    fed_server: subprocess.Popen | None = None  # SplitFed's fed server, when the config has fed_server
    port: int = 0
    containers: ContainerClients | None = None  # set by start() when the config names a client_image
    logs_dir: Path | None = None
    hooks: FederationHooks = field(default_factory=FederationHooks)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    supervisor: SupervisorLog = field(default_factory=SupervisorLog)
    say: Callable[[str], None] = print  # the progress output: restarts and losses are shown there
    restarts: dict[str, int] = field(default_factory=dict)  # client id -> restarts so far
    lost: dict[str, str] = field(default_factory=dict)  # client id -> why it stays down
    last_round: int | None = None  # the last round whose record the follower saw (set by run_federation)
    placement: ClientPlacement | None = None
    _stopping: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopped: threading.Event = field(default_factory=threading.Event, repr=False)
    _started_at: float = field(default_factory=time.monotonic, repr=False)
    _watchers: list[threading.Thread] = field(default_factory=list, repr=False)

    def client_ids(self) -> list[str]:
        return self.config.participant_ids() or [f"c{i + 1}" for i in range(self.config.clients)]

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "slperf.cli", *args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(self.torch_threads))
        env["PYTHONUNBUFFERED"] = "1"
        env[parent_death.ENV] = str(os.getpid())  # the daemons end with this process, even a SIGKILLed one
        if self.config.deterministic:  # cuBLAS reads it when it starts (see slperf.common.devices)
            env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        return env

    def _open_log(self, name: str, restart: int = 0) -> BinaryIO:
        """The child's log: a fresh file for its first start, appended to (after a marker line) on a restart, so
        the tail shown in errors is always the latest process's."""
        assert self.logs_dir is not None
        if not restart:
            return open(self.logs_dir / f"{name}.log", "wb")
        log = open(self.logs_dir / f"{name}.log", "ab")
        log.write(f"--- slperf federation: restart {restart} of {name} ---\n".encode())
        log.flush()
        return log

    def start(self) -> None:
        self.logs_dir = self.out_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        pki.init_pki(self.certs_dir, overwrite=True)
        for cid in self.client_ids():
            pki.add_client(self.certs_dir, cid)
        # Containers: the server listens on every address, so each client reaches it at its own network's gateway.
        address = "127.0.0.1:0"
        if self.config.client_image is not None:
            self.containers = ContainerClients(
                self.config.client_image,
                client_resources(self.config, self.client_ids()),
                self.certs_dir,
                self.logs_dir,
                torch_threads=self.torch_threads,
                data_dir=self.config.data_dir,
            )
            try:
                self.containers.open()
            except ContainerError as exc:
                raise FederationError(str(exc)) from None
            address = "0.0.0.0:0"
        if self.config.fed_server:
            self._start_fed_server()
        with self._open_log("server") as server_log:  # the child has its own descriptor
            self.server = subprocess.Popen(
                self._cmd(
                    "server",
                    "--address",
                    address,
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
            self.clients[cid] = self._spawn_client(cid)
        if self.hooks.on_started is not None:
            self.hooks.on_started(self)

    def _start_fed_server(self) -> None:
        """Starts the fed server with its own certificate at the config's address (port 0: any) and points the run's
        config at the port it got."""
        pki.add_fedserver(self.certs_dir)
        address = str(self.config.fed_server["address"])
        host = address.rpartition(":")[0]
        assert self.logs_dir is not None
        log_path = self.logs_dir / "fedserver.log"
        log_path.write_bytes(b"")
        # Appended to by the child (its stderr) and by the drain below (its stdout lines): both O_APPEND, or each
        # would write at its own offset over the other's lines.
        with open(log_path, "ab") as fed_log:
            self.fed_server = subprocess.Popen(
                self._cmd("fedserver", "--address", address, "--certs", str(self.certs_dir)),
                stdout=subprocess.PIPE,
                stderr=fed_log,
                env=self._env(),
            )
        assert self.fed_server.stdout is not None
        line = self.fed_server.stdout.readline().decode(errors="replace").strip()  # blocks until ready or exit
        if not line.startswith(FED_READY_PREFIX):
            self.fed_server.wait(timeout=30)
            raise FederationError(f"the fed server did not start: {self._tail('fedserver')}")
        self.config.fed_server = {"address": f"{host}:{int(line[len(FED_READY_PREFIX) :])}"}
        # Its per-round lines (SLPERF_FED_SETTLED) go on into its log, so the pipe never fills.
        out = self.fed_server.stdout

        def drain() -> None:
            with open(log_path, "ab") as sink:
                for chunk in iter(out.readline, b""):
                    sink.write(chunk)
                    sink.flush()

        threading.Thread(target=drain, name="fedserver-stdout", daemon=True).start()

    def _spawn_client(self, cid: str, restart: int = 0) -> subprocess.Popen | ContainerProcess:
        if self.containers is not None:
            self._open_log(cid, restart).close()  # the container's output is appended to it
            return self.containers.spawn(cid, self.port, restart)
        cert, key = client_paths(self.certs_dir, cid)
        prefix, address = [], f"127.0.0.1:{self.port}"
        if self.placement is not None:
            prefix, address = self.placement.client_endpoint(cid, self.port)
        with self._open_log(cid, restart) as log:
            return subprocess.Popen(
                prefix
                + self._cmd(
                    "client",
                    "--server",
                    address,
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

    # -- supervision ------------------------------------------------------------------------------------
    def supervise(self, on_server_exit: Callable[[str], None]) -> None:
        """A thread per child that waits for it to exit (a blocking wait, no polling). A client daemon that
        exits is restarted as the policy says; the server's exit is reported to ``on_server_exit``. Exits
        caused by ``stop`` are neither restarted nor reported, and ``stop`` returns once every watcher has
        ended."""
        watchers = [
            threading.Thread(target=self._watch_client, args=(cid,), name=f"supervise-{cid}", daemon=True)
            for cid in self.clients
        ]
        if self.server is not None:
            watchers.append(
                threading.Thread(
                    target=self._watch_server, args=(self.server, on_server_exit), name="supervise-server", daemon=True
                )
            )
        self._watchers.extend(watchers)
        for watcher in watchers:
            watcher.start()

    def _event(self, name: str, event: str, **fields: Any) -> None:
        self.supervisor.add(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.monotonic() - self._started_at, 3),
                "process": name,
                "event": event,
                "after_round": self.last_round,
                **fields,
            }
        )

    def _watch_server(self, proc: subprocess.Popen, on_server_exit: Callable[[str], None]) -> None:
        code = proc.wait()
        if self._stopping:
            return
        how, sig = describe_exit(code)
        tail = self._tail("server")
        self._event(
            "server",
            "exited",
            exit_code=code,
            signal=sig,
            action=ExitAction.FEDERATION_ENDS.value,
            pid=proc.pid,
            log_tail=tail,
        )
        on_server_exit(f"the server exited with {how}: {tail}")

    def _watch_client(self, cid: str) -> None:
        """Waits for the client's process, restarts it as the policy allows, and waits for the new one."""
        policy = self.restart
        while True:
            proc = self.clients[cid]
            code = proc.wait()
            if self._stopping:
                return
            how, sig = describe_exit(code)
            used = self.restarts.get(cid, 0)
            if not policy.enabled:
                action, note = ExitAction.NO_RESTART, "not restarted (restarts are off)"
            elif used >= policy.max_restarts:
                action, note = ExitAction.GAVE_UP, f"not restarted again ({used} of {policy.max_restarts} used)"
            else:
                action = ExitAction.RESTART
                note = f"restarting it in {policy.delay(used + 1):g} s (restart {used + 1} of {policy.max_restarts})"
            when = "before the first round ended" if self.last_round is None else f"after round {self.last_round}"
            self._event(
                cid,
                "exited",
                exit_code=code,
                signal=sig,
                action=action.value,
                pid=proc.pid,
                restarts=used,
                max_restarts=policy.max_restarts if policy.enabled else 0,
                log_tail=self._tail(cid, 3),
            )
            if action is not ExitAction.RESTART:
                self.lost[cid] = f"{cid} exited with {how} {when}, {note}"
                self.say(f"{self.lost[cid]}; the run goes on without it if the paradigm can")
                return
            self.say(f"{cid} exited with {how} {when}; {note}")
            if self._stopped.wait(policy.delay(used + 1)):  # the backoff, cut short by stop()
                return
            with self._lock:  # stop() takes the lock too, so no client is started after it collected them
                if self._stopping:
                    return
                try:
                    proc = self._spawn_client(cid, restart=used + 1)
                except OSError as exc:
                    self.lost[cid] = f"{cid} could not be restarted: {exc}"
                    self._event(cid, "restart_failed", error=str(exc), restarts=used)
                    self.say(self.lost[cid])
                    return
                self.restarts[cid] = used + 1
                self.clients[cid] = proc
            self._event(cid, "restarted", pid=proc.pid, restarts=used + 1, max_restarts=policy.max_restarts)
            self.say(f"{cid} restarted (pid {proc.pid}, restart {used + 1} of {policy.max_restarts})")

    # -- stopping ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._stopped.set()
        try:
            if self.hooks.before_stop is not None:
                self.hooks.before_stop(self)
        finally:
            try:
                self._stop_children()
                for watcher in self._watchers:  # each sees its child's exit and returns: nothing acts after stop
                    watcher.join(timeout=30)
            finally:
                if self.containers is not None:
                    self.containers.close()

    def container_figures(self) -> dict[str, Any] | None:
        """Per client: the limits its container got and the compute it reported (None without containers); read
        while the daemons still run."""
        if self.containers is None:
            return None
        compute = self.containers.compute()
        limits = self.containers.limits()
        return {
            "image": self.containers.image,
            "clients": {
                cid: {"limits": limits.get(cid), **(compute[cid].as_record() if cid in compute else {})}
                for cid in self.client_ids()
            },
        }

    def _stop_children(self) -> None:
        if self.server is not None and self.server.poll() is None:
            try:
                op = self.operator()
                op.shutdown(timeout=5)
                op.close()
            except Exception:  # the server may be gone already; terminate below covers it
                pass
        children = [*self.clients.values(), *([self.server] if self.server else [])]
        stop_processes(children + ([self.fed_server] if self.fed_server else []), grace=15)


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
    restart: RestartPolicy | None = None,
) -> dict:
    """Runs the config on a fresh local federation to its end and returns the run's summary, with what the
    supervisor did under ``"supervisor"``; ``hooks`` let a caller watch the processes (see FederationHooks),
    ``restart`` says what happens to a client daemon that exits (default: ``RestartPolicy()``)."""
    config, warnings = load_config(config_path)
    for warning in warnings:
        echo(f"warning: {warning}")
    # Decode into the cache once, and fail early if missing.
    load_dataset(config.dataset, config.data_dir, download=config.download)
    config.backend = "federation"  # this is the federation backend, whatever the file says (--backend chose it)
    config.client_ids = config.participant_ids() or [f"c{i + 1}" for i in range(config.clients)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    certs = Path(tempfile.mkdtemp(prefix="slperf-certs-"))
    bar: Any = None

    def say(message: str) -> None:
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            echo(message)

    fed = Federation(
        config=config,
        out_dir=out_dir,
        certs_dir=certs,
        torch_threads=config.torch_threads or 1,
        hooks=hooks or FederationHooks(),
        restart=restart or RestartPolicy(),
        say=say,
    )
    server_gone: list[str] = []
    started = time.monotonic()
    shaped: ShapedClients | None = None
    try:
        shaped, links = _shaped_network(config, out_dir, echo)
        fed.placement = shaped
        fed.start()
        op = fed.operator()

        def on_server_exit(message: str) -> None:
            server_gone.append(message)
            op.close()  # ends the follower at once, instead of its wait for a server restart that cannot come

        fed.supervise(on_server_exit)
        try:
            # The launcher's keys (links, containers) are applied here; the server refuses them (it starts no daemon).
            run_id = op.start_run(yaml.safe_dump(config.for_server()))
            fed.supervisor.attach(out_dir / run_id / SUPERVISOR_LOG)
            echo(
                f"run {run_id}: {config.paradigm} on {config.dataset}, {config.clients} clients over mutual TLS "
                f"(port {fed.port}{f', clients in containers of {config.client_image}' if fed.containers else ''}); "
                f"logs in {fed.logs_dir}"
            )
            if show_progress:
                from tqdm import tqdm

                bar = tqdm(total=config.epochs, desc=config.paradigm, unit="round", file=sys.stderr)

            def on_round(record: dict) -> None:
                fed.last_round = record["round"]
                out = f" ({', '.join(record['dropped'])} sat out)" if record.get("dropped") else ""
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(acc=f"{100 * record['test_accuracy']:.2f}%")
                    if out:
                        say(f"round {record['round'] + 1}:{out}")
                else:
                    say(
                        f"round {record['round'] + 1}/{config.epochs}: "
                        f"test accuracy {100 * record['test_accuracy']:.2f}%{out}"
                    )
                if fed.hooks.on_round is not None:
                    fed.hooks.on_round(fed, record)

            status = op.follow(run_id, on_round)
        except Exception as exc:
            if server_gone:  # the follower's error is only the symptom
                raise FederationError(f"the federation stopped: {server_gone[0]}") from exc
            raise
        finally:
            if bar is not None:
                bar.close()
                bar = None
        op.close()
        if status.state != "finished":
            reason = status.error or status.state
            if fed.lost:
                reason += f" (client daemons lost: {'; '.join(fed.lost.values())})"
            raise FederationError(f"run {run_id} {status.state}: {reason}")
        summary = json.loads(status.summary_json)
        containers = fed.container_figures()
        if containers is not None:
            summary["client_containers"] = containers
        summary["federation_seconds"] = time.monotonic() - started
        summary["run_dir"] = str(out_dir / run_id)
        if shaped is not None:
            summary["network"] = {"profile": shaped.spec.label, "links": [m.as_record() for m in links]}
        summary["supervisor"] = {
            "restarts": dict(fed.restarts),
            "lost": dict(fed.lost),
            "log": str(out_dir / run_id / SUPERVISOR_LOG),
        }
        return summary
    finally:
        try:
            fed.stop()
        finally:
            if shaped is not None:
                shaped.close()  # every namespace, link and relay, also after a failure
            shutil.rmtree(certs, ignore_errors=True)


def _shaped_network(
    config: RunConfig, out_dir: Path, echo: Callable[[str], None]
) -> tuple[ShapedClients | None, list[LinkMeasurement]]:
    """For a run with ``network:``: the client daemons' namespaces, built, shaped and measured (torn down again if
    any of it fails); (None, []) without the key. FederationError when namespaces cannot be made here."""
    spec = network_spec(config)
    if spec is None:
        return None, []
    from slperf.netshape.clients import ShapedClients
    from slperf.netshape.namespaces import NetnsUnavailable

    assert config.client_ids is not None
    shaped = ShapedClients(spec, config.client_ids, out_dir / "network")
    try:
        shaped.build()
    except NetnsUnavailable as exc:
        raise FederationError(f"network: {spec.label} needs client daemons in network namespaces: {exc}") from None
    try:
        links = shaped.measure()
    except BaseException:
        shaped.close()
        raise
    for m in links:
        echo(
            f"link {m.client} ({m.profile}): measured {m.up_mbit:.1f} Mbit/s up, {m.down_mbit:.1f} down, "
            f"round trip {m.rtt_path_ms:.1f} ms through its relay"
        )
    return shaped, links
