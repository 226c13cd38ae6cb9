"""Several "machines" on one host: a star of network namespaces around a bridge.

    topo = Topology(["gateway", "c1", "c2"])  # a bridge namespace + one namespace per host
    topo.build()                              # raises NetnsUnavailable (with what is missing) when it cannot
    topo.address("c1")                        # e.g. "10.173.41.2" (a 10.x.y.0/24 drawn per topology)
    topo.shape("c1", 100)                     # tc tbf at 100 Mbit/s on both ends of c1's link
    topo.popen("c1", [python, "-m", "slperf.cli", "client", ...], log=path)
    topo.link_down("c2"); topo.link_up("c2") # pull / plug c2's cable (its port on the bridge)
    topo.close()                              # stops every process it started, deletes every namespace

Rules it follows: every name carries the owner's pid and a random tag (``namespaces.PREFIX``), so concurrent
topologies never collide and a killed owner's leftovers are swept; veth pairs are created directly inside their
namespaces, so nothing is ever added to the root namespace; the hosts get only their /24 (no default route), so a
wrong address fails as unreachable instead of leaving the machine.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from slperf.netshape.namespaces import PREFIX, delete, ip, listed, new_tag, preflight
from slperf.netshape.shaping import Tbf


class Topology:
    """A bridge namespace and one namespace per host, each host with one veth leg (``eth0``) to the bridge."""

    def __init__(self, hosts: Sequence[str], *, subnet: str | None = None) -> None:
        if len(set(hosts)) != len(hosts) or not hosts:
            raise ValueError("host names must be unique and at least one")
        if len(hosts) > 250:
            raise ValueError(f"a topology holds at most 250 hosts (one /24), got {len(hosts)}")
        self.tag = new_tag()
        if subnet is None:
            rng = random.SystemRandom()
            subnet = f"10.{rng.randint(64, 254)}.{rng.randint(0, 255)}"
        self.subnet = subnet  # the first three octets
        self.hosts = list(hosts)
        self.switch = f"{PREFIX}-{self.tag}-sw"
        self._ns = {h: f"{PREFIX}-{self.tag}-{i}" for i, h in enumerate(self.hosts)}
        self._port = {h: f"p{i}" for i, h in enumerate(self.hosts)}  # the host's port on the bridge
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    # -- names ----------------------------------------------------------------------------------------
    def ns(self, host: str) -> str:
        return self._ns[host]

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts.index(host) + 1}"

    # -- building and tearing down -----------------------------------------------------------------------
    def _add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def build(self) -> Topology:
        preflight()
        try:
            self._add_ns(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for host in self.hosts:
                ns, port = self._ns[host], self._port[host]
                self._add_ns(ns)
                # Both ends are born inside their namespaces: nothing appears in the root namespace.
                ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
                ip("-n", self.switch, "link", "set", port, "master", "br0")
                ip("-n", self.switch, "link", "set", port, "up")
                ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                routes = ip("-n", ns, "route", "show", "default").stdout.strip()
                if routes:
                    raise RuntimeError(f"namespace {ns} has a default route ({routes}); refusing to go on")
        except BaseException:
            self.close()
            raise
        return self

    def shape(self, host: str, rate_mbit: float) -> Tbf:
        """Limits the host's link to ``rate_mbit`` each way: tbf on its eth0 (what it sends) and on its bridge
        port (what it receives)."""
        tbf = Tbf(rate_mbit)
        tbf.apply(self._ns[host], "eth0")
        tbf.apply(self.switch, self._port[host])
        return tbf

    def close(self) -> None:
        """Stops the processes (TERM, then KILL), then deletes every namespace (what still runs inside is
        killed by pid, its veths go with it). Safe to call twice."""
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
            if proc.stdout:
                proc.stdout.close()
        for name in reversed(self.made):
            delete(name)
        self.made.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of this topology that still exist (none after close)."""
        return [name for name in listed() if name.startswith(f"{PREFIX}-{self.tag}-")]

    def __enter__(self) -> Topology:
        return self.build()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
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
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Starts argv inside the host's namespace, output appended to ``log`` (stdout piped back instead when
        ``capture_stdout``). `ip netns exec` execs argv, so the pid is the program's own."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.cmd(host, argv),
                stdout=subprocess.PIPE if capture_stdout else out,
                stderr=out if capture_stdout else subprocess.STDOUT,
                env=dict(env) if env is not None else None,
            )
        self.procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(host, argv), capture_output=True, text=True, timeout=timeout)

    # -- faults --------------------------------------------------------------------------------------------
    def link_down(self, host: str) -> None:
        """Pulls the host's cable: its port on the bridge goes down, so its own eth0 loses carrier and
        every packet either way is dropped silently (no RST, no ICMP), as on a cut link."""
        ip("-n", self.switch, "link", "set", self._port[host], "down")

    def link_up(self, host: str) -> None:
        ip("-n", self.switch, "link", "set", self._port[host], "up")
