"""Client daemons of a local federation in Docker containers, each with its own limits, network and data volume
(run config ``client_image`` / ``client_resources``; docs/containers.md).

Split learning is meant for clients too weak to train the whole model; on one machine every host process gets all
of its cores. Here each client daemon runs in a container of ``client_image`` (the deployment image,
deploy/Dockerfile) started through the Docker SDK on the engine of ``DOCKER_HOST``:

- limits: ``cpus`` as the container's ``nano_cpus`` (a CFS quota), ``memory_mb`` as ``mem_limit`` and
  ``memswap_limit`` (no swap beyond it), from ``client_resources``;
- its own bridge network: the server stays a host process, listening on every address, and a client reaches it at
  its network's gateway (the host's address on that bridge), over mutual TLS with the server name ``server`` in
  the server certificate, as in the compose deployment;
- its own certificates: a read-only folder with the CA certificate and only this client's key pair;
- its own data volume on the dataset cache (seeded by the engine from the image's baked artifacts on first
  mount), and the run's ``data_dir``, if any, mounted read-only as the silo's pinned ``--data-dir``;
- its own metrics endpoint (inside its network), read by the launcher before the daemons are stopped: the
  daemon's compute time and steps per phase (``slperf.slclient.metrics``), so a run reports what each client
  computed under its limits.

Every container, network and volume carries the labels ``slperf.run`` (this launch) and ``slperf.owner``
(host and pid of the launcher). ``close`` removes what this launch made, found by its label, whatever stage the
launch reached; ``open`` first removes what launchers that no longer live on this host left behind (a launcher
killed with SIGKILL cannot clean up after itself).

The handle of a client's container (``ContainerProcess``) answers what ``slperf.federation.Federation`` asks of a
child process (``pid``, ``poll``, ``wait``, ``terminate``, ``kill``), so the launcher supervises, restarts and
stops container clients exactly as it does host processes; ``pid`` is the daemon's process id on the host (the
memory probe reads its /proc entry).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slperf.common.client_resources import ClientResources
from slperf.common.security.layout import ca_paths, client_paths

LABEL_RUN = "slperf.run"
LABEL_OWNER = "slperf.owner"
IMAGE_UID = 10001  # the image's slperf user (deploy/Dockerfile), who must read the mounted client key
CERTS_MOUNT = "/var/lib/slperf/certs"
CACHE_MOUNT = "/var/lib/slperf/cache"
DATA_MOUNT = "/var/lib/slperf/data"
METRICS_PORT = 9100
SERVER_NAME = "server"  # a SAN of the server certificate (slperf.pki.DEFAULT_SERVER_NAMES)
_WAIT_SLICE = 30.0  # seconds one blocking engine call waits for a container's exit before it is asked again


class ContainerError(RuntimeError):
    """The Docker engine cannot be used for the client containers; the message says why and what to do."""


def _docker() -> Any:
    try:
        import docker
    except ImportError:
        raise ContainerError(
            "client_image needs the Docker SDK for Python: pip install 'slperf[docker]' (or docker==7.2.0)"
        ) from None
    return docker


@dataclass(frozen=True)
class ClientCompute:
    """What one client daemon reports of its own work (its metrics endpoint): compute seconds (pass time less the
    waits on the link) and steps, by phase."""

    train_seconds: float
    train_steps: int
    eval_seconds: float
    eval_steps: int
    train_cpu_seconds: float = 0.0  # the process's CPU time during its training passes

    @property
    def train_ms_per_batch(self) -> float | None:
        return 1000 * self.train_seconds / self.train_steps if self.train_steps else None

    @property
    def train_core_share(self) -> float | None:
        """The share of a core the daemon got while it computed (CPU over compute time in its training passes)."""
        return self.train_cpu_seconds / self.train_seconds if self.train_seconds > 0 else None

    def as_record(self) -> dict[str, Any]:
        return {
            "train_compute_seconds": self.train_seconds,
            "train_steps": self.train_steps,
            "train_ms_per_batch": self.train_ms_per_batch,
            "train_core_share": self.train_core_share,
            "eval_compute_seconds": self.eval_seconds,
            "eval_steps": self.eval_steps,
        }


_COMPUTE_METRICS = (
    "slperf_client_compute_seconds_total",
    "slperf_client_steps_total",
    "slperf_client_pass_cpu_seconds_total",
)


def parse_client_metrics(text: str) -> ClientCompute:
    """The compute figures from a client daemon's Prometheus text (``slperf_client_compute_seconds_total``,
    ``slperf_client_steps_total`` and ``slperf_client_pass_cpu_seconds_total``, by ``phase``); a metric that is
    absent counts 0."""
    values: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.partition("}")
        phase = next((p.split("=", 1)[1].strip('"') for p in labels.split(",") if p.startswith("phase=")), None)
        if name in _COMPUTE_METRICS and phase is not None:
            try:
                values[(name, phase)] = float(value.split()[0])
            except (IndexError, ValueError):
                continue
    get = values.get
    return ClientCompute(
        train_seconds=get(("slperf_client_compute_seconds_total", "train"), 0.0),
        train_steps=int(get(("slperf_client_steps_total", "train"), 0)),
        eval_seconds=get(("slperf_client_compute_seconds_total", "eval"), 0.0),
        eval_steps=int(get(("slperf_client_steps_total", "eval"), 0)),
        train_cpu_seconds=get(("slperf_client_pass_cpu_seconds_total", "train"), 0.0),
    )


class ContainerProcess:
    """A client daemon's container, with the part of ``subprocess.Popen``'s interface the launcher uses. Its output
    is copied into ``log_path`` as it comes (a thread follows the container's log stream)."""

    def __init__(self, container: Any, log_path: Path):
        self.container = container
        self.returncode: int | None = None
        self.stdout = None  # the launcher closes a Popen's pipe; a container has none
        container.reload()
        self.pid: int = int(container.attrs["State"]["Pid"])
        self._log_thread = threading.Thread(
            target=self._follow_log, args=(log_path,), name=f"log-{container.name}", daemon=True
        )
        self._log_thread.start()

    def _follow_log(self, path: Path) -> None:
        try:
            with open(path, "ab") as log:
                for chunk in self.container.logs(stream=True, follow=True):
                    log.write(chunk)
                    log.flush()
        except Exception:  # the engine went away or the container was removed: the log ends there
            pass

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.container.reload()
            except Exception:  # removed: it is not running
                self.returncode = -9
                return self.returncode
            state = self.container.attrs["State"]
            if state["Status"] in ("exited", "dead"):
                self.returncode = int(state["ExitCode"])
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Blocks until the container exits (the engine's wait call, in slices); subprocess.TimeoutExpired after
        ``timeout`` seconds, as Popen.wait does."""
        import requests

        left = timeout
        while self.returncode is None:
            step = _WAIT_SLICE if left is None else min(_WAIT_SLICE, left)
            try:
                result = self.container.wait(timeout=max(step, 0.1))
                self.returncode = int(result.get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
                # Over a unix socket the slice's end comes as a ConnectionError saying "Read timed out"; any other
                # connection error means the engine is gone, and the container with it.
                if isinstance(exc, requests.exceptions.ConnectionError) and "timed out" not in str(exc):
                    self.returncode = -9
                    break
                if left is not None:
                    left -= step
                    if left <= 0:
                        raise subprocess.TimeoutExpired(self.container.name, timeout or 0) from None
            except Exception:  # the container is gone (removed): it is not running
                self.returncode = -9
        return self.returncode

    def terminate(self) -> None:
        self._signal("SIGTERM")

    def kill(self) -> None:
        self._signal("SIGKILL")

    def _signal(self, name: str) -> None:
        try:
            self.container.kill(signal=name)
        except Exception:  # already exited
            pass


class ContainerClients:
    """The containers, networks, volumes and certificate folders of one local federation's client daemons."""

    def __init__(
        self,
        image: str,
        resources: Mapping[str, ClientResources],
        certs_dir: Path,
        logs_dir: Path,
        *,
        torch_threads: int = 1,
        data_dir: str | None = None,
    ):
        self.image = image
        self.resources = dict(resources)
        self.certs_dir = certs_dir
        self.logs_dir = logs_dir
        self.torch_threads = torch_threads
        self.data_dir = data_dir
        self.token = secrets.token_hex(4)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.labels = {LABEL_RUN: self.token, LABEL_OWNER: self.owner}
        self.client: Any = None
        self.networks: dict[str, Any] = {}
        self.volumes: dict[str, Any] = {}
        self.containers: dict[str, ContainerProcess] = {}
        self._cert_root = Path(tempfile.mkdtemp(prefix="slperf-ccerts-"))
        self._cert_root.chmod(0o755)  # the image's user must reach its folder

    # -- set-up -----------------------------------------------------------------------------------------
    def open(self) -> None:
        """Connects to the engine (DOCKER_HOST), checks the image is there and sweeps what dead launchers left."""
        docker = _docker()
        try:
            self.client = docker.from_env()
            self.client.ping()
        except Exception as exc:
            where = os.environ.get("DOCKER_HOST", "the default socket (unix:///var/run/docker.sock)")
            raise ContainerError(
                f"client_image needs a Docker engine, and none answers at {where}: {exc} (start dockerd, or point "
                "DOCKER_HOST at one; docs/containers.md)"
            ) from None
        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise ContainerError(
                f"client_image {self.image} is not on the engine: build it first (docker build -f deploy/Dockerfile "
                f"-t {self.image} .; docs/containers.md)"
            ) from None
        sweep_stale(self.client)

    def _network(self, cid: str) -> Any:
        if cid not in self.networks:
            self.networks[cid] = self.client.networks.create(
                f"slperf-{self.token}-{cid}", driver="bridge", labels=self.labels, check_duplicate=True
            )
            self.networks[cid].reload()
        return self.networks[cid]

    def gateway(self, cid: str) -> str:
        """The host's address on ``cid``'s network: where its daemon reaches the server."""
        configs = self._network(cid).attrs["IPAM"]["Config"]
        gateway = next((c.get("Gateway") for c in configs if c.get("Gateway")), None)
        if not gateway:
            raise ContainerError(f"the engine gave network slperf-{self.token}-{cid} no gateway address")
        return str(gateway).split("/")[0]

    def _certs(self, cid: str) -> Path:
        """A folder with the CA certificate and only ``cid``'s key pair, readable by the image's user."""
        folder = self._cert_root / cid
        if not folder.is_dir():
            folder.mkdir(mode=0o755)
            cert, key = client_paths(self.certs_dir, cid)
            shutil.copyfile(ca_paths(self.certs_dir)[0], folder / "ca.pem")
            shutil.copyfile(cert, folder / "client.pem")
            shutil.copyfile(key, folder / "client.key")
            for name in ("ca.pem", "client.pem"):
                (folder / name).chmod(0o644)
            if os.geteuid() == 0:
                os.chown(folder / "client.key", IMAGE_UID, IMAGE_UID)
                (folder / "client.key").chmod(0o600)
            else:  # a rootless engine maps the image's user to this one; the folder sits in a private temp dir
                (folder / "client.key").chmod(0o644)
        return folder

    def _volume(self, cid: str) -> Any:
        if cid not in self.volumes:
            self.volumes[cid] = self.client.volumes.create(f"slperf-{self.token}-{cid}-cache", labels=self.labels)
        return self.volumes[cid]

    def spawn(self, cid: str, port: int, restart: int = 0) -> ContainerProcess:
        """Starts ``cid``'s daemon in a fresh container (a restart replaces the exited one, keeping its network and
        data volume)."""
        old = self.containers.pop(cid, None)
        if old is not None:
            _remove(old.container)
        limits = self.resources.get(cid, ClientResources())
        volumes: dict[str, dict[str, str]] = {
            self._volume(cid).name: {"bind": CACHE_MOUNT, "mode": "rw"},
            str(self._certs(cid)): {"bind": CERTS_MOUNT, "mode": "ro"},
        }
        command = [
            "client",
            "--server",
            f"{self.gateway(cid)}:{port}",
            "--id",
            cid,
            "--ca",
            f"{CERTS_MOUNT}/ca.pem",
            "--cert",
            f"{CERTS_MOUNT}/client.pem",
            "--key",
            f"{CERTS_MOUNT}/client.key",
            "--server-name",
            SERVER_NAME,
            "--torch-threads",
            str(self.torch_threads),
            "--metrics-address",
            f"0.0.0.0:{METRICS_PORT}",
        ]
        if self.data_dir is not None:
            volumes[str(Path(self.data_dir).expanduser().absolute())] = {"bind": DATA_MOUNT, "mode": "ro"}
            command += ["--data-dir", DATA_MOUNT]
        memory = f"{limits.memory_mb}m" if limits.memory_mb is not None else None
        container = self.client.containers.run(
            self.image,
            command=command,
            name=f"slperf-{self.token}-{cid}-{restart}",
            hostname=cid,
            labels={**self.labels, "slperf.client": cid},
            network=self._network(cid).name,
            volumes=volumes,
            nano_cpus=limits.nano_cpus,
            mem_limit=memory,
            memswap_limit=memory,
            environment={"OMP_NUM_THREADS": str(self.torch_threads), "PYTHONUNBUFFERED": "1"},
            healthcheck={"test": ["NONE"]},  # the image's check probes a server inside the container
            detach=True,
        )
        proc = ContainerProcess(container, self.logs_dir / f"{cid}.log")
        self.containers[cid] = proc
        return proc

    # -- figures --------------------------------------------------------------------------------------------
    def limits(self) -> dict[str, dict[str, Any]]:
        """What the engine applied to each client's container (its HostConfig), for the run's summary."""
        out: dict[str, dict[str, Any]] = {}
        for cid, proc in self.containers.items():
            try:
                proc.container.reload()
                host = proc.container.attrs["HostConfig"]
            except Exception:
                continue
            nano, memory = host.get("NanoCpus") or 0, host.get("Memory") or 0
            out[cid] = {"cpus": nano / 1e9 if nano else None, "memory_mb": memory // (1 << 20) if memory else None}
        return out

    def compute(self, timeout: float = 10.0) -> dict[str, ClientCompute]:
        """Each running daemon's compute figures, read from its metrics endpoint on its network (call before the
        daemons are stopped: the figures live in the daemon)."""
        out: dict[str, ClientCompute] = {}
        for cid, proc in self.containers.items():
            try:
                proc.container.reload()
                address = proc.container.attrs["NetworkSettings"]["Networks"][self._network(cid).name]["IPAddress"]
                with urllib.request.urlopen(f"http://{address}:{METRICS_PORT}/metrics", timeout=timeout) as reply:
                    out[cid] = parse_client_metrics(reply.read().decode())
            except Exception:  # a daemon that is gone has no figures; the others still count
                continue
        return out

    # -- clean-up ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Removes every container, network and volume of this launch (by its label) and the certificate copies."""
        try:
            if self.client is not None:
                remove_labelled(self.client, f"{LABEL_RUN}={self.token}")
        finally:
            shutil.rmtree(self._cert_root, ignore_errors=True)
            if self.client is not None:
                self.client.close()


def _remove(container: Any) -> None:
    try:
        container.remove(force=True, v=True)
    except Exception:  # already gone
        pass


def remove_labelled(client: Any, label: str) -> None:
    """Containers first (they hold the networks and volumes), then networks, then volumes with ``label``."""
    for container in client.containers.list(all=True, filters={"label": label}):
        _remove(container)
    for network in client.networks.list(filters={"label": label}):
        try:
            network.remove()
        except Exception:
            pass
    for volume in client.volumes.list(filters={"label": label}):
        try:
            volume.remove(force=True)
        except Exception:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(client: Any) -> list[str]:
    """Removes what launchers on this host that no longer run left behind; returns their ``slperf.run`` labels."""
    host = socket.gethostname()
    stale: set[str] = set()
    for kind in (
        client.containers.list(all=True, filters={"label": LABEL_OWNER}),
        client.networks.list(filters={"label": LABEL_OWNER}),
        client.volumes.list(filters={"label": LABEL_OWNER}),
    ):
        for item in kind:
            labels = (item.attrs.get("Labels") or item.attrs.get("Config", {}).get("Labels")) or {}
            owner_host, _, pid = str(labels.get(LABEL_OWNER, "")).rpartition(":")
            if owner_host == host and pid.isdigit() and not _alive(int(pid)) and labels.get(LABEL_RUN):
                stale.add(labels[LABEL_RUN])
    for token in sorted(stale):
        remove_labelled(client, f"{LABEL_RUN}={token}")
    return sorted(stale)
