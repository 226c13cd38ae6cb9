"""A private Docker engine for the deployment tests (tests/deploy/test_compose_federation.py,
tests/deploy/test_container_clients.py): dockerd with its own socket, data root and exec root in a temporary
folder, --bridge=none and no iptables rules, so it touches nothing of the host's; ``stop`` leaves no process or
mount behind.

SLPERF_DOCKER_TEST_DATA_ROOT=DIR keeps the engine's data root (images and build cache) in DIR between runs, for
development; by default it is a fresh temporary folder that is deleted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


class Dockerd:
    """A private Docker engine: own socket, data root and exec root; stop() leaves no process or mount behind."""

    def __init__(self, exe: str, docker: str):
        self.exe, self.docker = exe, docker
        # Short paths: the engine puts unix sockets under its exec root (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="sld-", dir="/tmp"))
        keep = os.environ.get("SLPERF_DOCKER_TEST_DATA_ROOT")
        self.data_root = Path(keep) if keep else self.root / "data"
        self.socket = self.root / "docker.sock"
        self.log = self.root / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        (self.root / "config").mkdir()
        (self.root / "daemon.json").write_text("{}")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_", "SLPERF_"))}
        env.update(DOCKER_HOST=f"unix://{self.socket}", DOCKER_CONFIG=str(self.root / "config"), **extra)
        return env

    def start(self) -> None:
        cmd = [
            self.exe,
            "--config-file",
            str(self.root / "daemon.json"),
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.root / "exec"),
            "-H",
            f"unix://{self.socket}",
            "--pidfile",
            str(self.root / "dockerd.pid"),
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--userland-proxy=false",
            "--log-level=warn",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd exited {self.proc.returncode}: {self.tail()}")
            if subprocess.run([self.docker, "info"], env=self.env(), capture_output=True, timeout=30).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"dockerd did not answer within 90 s: {self.tail()}")

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _children(self) -> list[int]:
        """Processes still holding this engine's folders (containerd, shims), found by their command lines."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.root) in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self._children():  # started by this engine (its containerd and shims); ended by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith((str(self.root), str(self.data_root)))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
        left = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.root))
        ]
        if not left:
            shutil.rmtree(self.root, ignore_errors=True)
        assert not left, f"mounts left under {self.root}: {left}"
        assert not self._children(), "processes of the test's dockerd are still running"
