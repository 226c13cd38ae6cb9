"""Several "machines" on one host: a star of network namespaces around a bridge, for network-fault tests.

    topo = Topology(["server", "c1", "c2"])   # a bridge namespace + one namespace per host
    topo.build()                              # raises NetnsUnavailable (a reason to skip) when it cannot
    topo.address("server")                    # e.g. "10.173.41.1" (a 10.x.y.0/24 drawn per topology)
    topo.popen("c1", [python, "-m", "slperf.cli", "client", ...], log=path)
    topo.link_down("c2"); topo.link_up("c2") # pull / plug c2's cable (its port on the bridge)
    topo.close()                              # stops every process it started, deletes every namespace

Network rules this follows: every name carries a random suffix (other test runs share the machine); veth
pairs are created directly inside their namespaces, so nothing is ever added to the root namespace; the
host namespaces get only their /24 (no default route), so a wrong address fails as unreachable instead of
leaving the machine; nothing here ever connects to a namespace address from the root namespace.

Run as a script it is the operator (``python netns.py operate ...``), so that the operator too runs on its
own "machine" (``ip netns exec``): it starts a run with OperatorClient, follows it, and prints one JSON line
per finished round and a last one with the final status.
"""

from __future__ import annotations

import json
import os
import queue
import random
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "slnf"  # every namespace this module makes starts with it


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here; the message says why (tests skip with it)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def preflight() -> None:
    """Raises NetnsUnavailable unless this process can create and delete network namespaces."""
    if sys.platform != "linux":
        raise NetnsUnavailable(f"network namespaces need Linux (this is {sys.platform})")
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root (run the network-fault tests as root)")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
    probe = f"{PREFIX}-probe-{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` does not work here: {made.stderr.strip() or made.returncode}")
    _ip("netns", "del", probe, check=False)


class Lines:
    """A process's stdout read line by line on a thread, so a test can wait for a line with a deadline."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)  # EOF

    def get(self, timeout: float) -> str | None:
        """The next line; None at EOF; raises queue.Empty after ``timeout`` seconds without one."""
        line = self._queue.get(timeout=timeout)
        if line is None:
            self._queue.put(None)  # stays at EOF
        return line

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.get(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise EOFError(f"the process ended before printing {prefix!r}")
            if line.startswith(prefix):
                return line


class Topology:
    """A bridge namespace and one namespace per host, each host with one veth leg to the bridge."""

    def __init__(self, hosts: Sequence[str], *, subnet: str | None = None):
        if len(set(hosts)) != len(hosts) or not hosts:
            raise ValueError("host names must be unique and at least one")
        self.tag = secrets.token_hex(3)
        if subnet is None:
            rng = random.SystemRandom()
            subnet = f"10.{rng.randint(64, 254)}.{rng.randint(0, 255)}"
        self.subnet = subnet  # the first three octets
        self.hosts = list(hosts)
        self.switch = f"{PREFIX}-{self.tag}-sw"
        self._ns = {h: f"{PREFIX}-{self.tag}-{i}" for i, h in enumerate(self.hosts)}
        self._port = {h: f"p{i}" for i, h in enumerate(self.hosts)}  # the host's port on the bridge
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []

    # -- names ----------------------------------------------------------------------------------------
    def ns(self, host: str) -> str:
        return self._ns[host]

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts.index(host) + 1}"

    # -- building and tearing down -----------------------------------------------------------------------
    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def build(self) -> Topology:
        preflight()
        try:
            self._add_ns(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for host in self.hosts:
                ns, port = self._ns[host], self._port[host]
                self._add_ns(ns)
                # Both ends are born inside their namespaces: nothing appears in the root namespace.
                _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
                _ip("-n", self.switch, "link", "set", port, "master", "br0")
                _ip("-n", self.switch, "link", "set", port, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                routes = _ip("-n", ns, "route", "show", "default").stdout.strip()
                if routes:
                    raise RuntimeError(f"namespace {ns} has a default route ({routes}); refusing to go on")
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stops the processes (TERM, then KILL), then deletes every namespace (with it, its veths)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for name in reversed(self.made):
            # Anything still inside one of our namespaces was started by our processes: end it by its pid.
            pids = _ip("netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", name, check=False)
        self.made.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of this topology that still exist (should be none after close)."""
        listed = _ip("netns", "list", check=False).stdout
        return [line.split()[0] for line in listed.splitlines() if line.startswith(f"{PREFIX}-{self.tag}-")]

    def __enter__(self) -> Topology:
        return self.build()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running things on a host -------------------------------------------------------------------------
    def cmd(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self._ns[host], *argv]

    def popen(
        self,
        host: str,
        argv: Sequence[str],
        *,
        log: Path,
        capture_stdout: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """Starts argv inside the host's namespace, output appended to ``log`` (stdout piped back instead when
        ``capture_stdout``). `ip netns exec` execs argv, so the pid is the program's own."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.cmd(host, argv),
                stdout=subprocess.PIPE if capture_stdout else out,
                stderr=out if capture_stdout else subprocess.STDOUT,
                env=env,
            )
        self.procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(host, argv), capture_output=True, text=True, timeout=timeout)

    # -- faults --------------------------------------------------------------------------------------------
    def link_down(self, host: str) -> None:
        """Pulls the host's cable: its port on the bridge goes down, so its own eth0 loses carrier and
        every packet either way is dropped silently (no RST, no ICMP), as on a cut link."""
        _ip("-n", self.switch, "link", "set", self._port[host], "down")

    def link_up(self, host: str) -> None:
        _ip("-n", self.switch, "link", "set", self._port[host], "up")


# -- the operator, run inside a namespace ------------------------------------------------------------------
def _operate(argv: Sequence[str]) -> int:
    import argparse

    from slperf.common.security.credentials import operator_channel_credentials
    from slperf.operator import OperatorClient

    parser = argparse.ArgumentParser(prog="netns.py operate")
    parser.add_argument("--server", required=True)
    parser.add_argument("--certs", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--run-id", default="")
    args = parser.parse_args(argv)

    def emit(event: str, **fields) -> None:
        print(json.dumps({"t": time.time(), "event": event, **fields}), flush=True)

    op = OperatorClient(args.server, operator_channel_credentials(args.certs))
    try:
        run_id = op.start_run(args.config.read_text(), args.run_id, timeout=60)
        emit("started", run_id=run_id)
        status = op.follow(run_id, lambda record: emit("round", record=record))
        emit(
            "final",
            run_id=run_id,
            state=status.state,
            error=status.error,
            summary=json.loads(status.summary_json) if status.summary_json else None,
        )
    finally:
        op.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["operate"]:
        sys.exit("usage: python netns.py operate --server HOST:PORT --certs DIR --config FILE")
    sys.exit(_operate(sys.argv[2:]))
