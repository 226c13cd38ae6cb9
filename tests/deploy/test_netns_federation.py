"""The deployment topology as plain processes on separate hosts: network namespaces joined by a bridge.

A switch namespace holds a bridge; the server, the three client daemons and the operator each live in their own
namespace with their own address on one /24, over veth legs to the bridge. The server certificate's SAN names the
server's namespace address, and the clients dial that address without any TLS name override. All traffic stays
inside namespaces this test made (no namespace has a default route; nothing is sent from the root namespace), and
every namespace is deleted at the end, also on failure. Needs root and `ip netns`; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slperf.federation import stop_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "deploy" / "configs" / "compose-smoke.yaml"
CLIENTS = ("c1", "c2", "c3")
READY = "SLPERF_READY port="


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _require_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip(f"network namespaces need root (this test runs as uid {os.geteuid()})")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed")
    probe = f"slpprobe{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` is not available here: {made.stderr.strip()}")
    _ip("netns", "del", probe, check=False)


class Hosts:
    """Namespaces on one bridge; everything it made is removed by close(), in reverse order."""

    def __init__(self, subnet_prefix: str):
        self.tag = secrets.token_hex(3)
        self.prefix = subnet_prefix  # e.g. "10.213.57"
        self.switch = f"slp{self.tag}-sw"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.address: dict[str, str] = {}

    def ns(self, role: str) -> str:
        return f"slp{self.tag}-{role}"

    def setup(self, roles: dict[str, int]) -> None:
        _ip("netns", "add", self.switch)
        self.namespaces.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for role, host in roles.items():
            ns = self.ns(role)
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            # Both ends are created inside the namespaces: nothing touches the root namespace's links.
            _ip("-n", self.switch, "link", "add", f"p-{role}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.switch, "link", "set", f"p-{role}", "master", "br0")
            _ip("-n", self.switch, "link", "set", f"p-{role}", "up")
            address = f"{self.prefix}.{host}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")
            self.address[role] = address

    def route_device(self, role: str, to: str) -> str:
        """The device `role` would use to reach `to` (`ip route get` sends nothing)."""
        out = _ip("-n", self.ns(role), "route", "get", to).stdout.split()
        return out[out.index("dev") + 1]

    def spawn(self, role: str, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        # `ip netns exec` execs the command after entering the namespace, so the pid is the daemon's own.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), *argv], env=env, stderr=open(log, "wb"), **kwargs
        )
        self.procs.append(proc)
        return proc

    def run(self, role: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv], env=env, capture_output=True, text=True, timeout=timeout
        )

    def close(self) -> None:
        stop_processes(self.procs, grace=15)
        for ns in reversed(self.namespaces):  # deleting a namespace deletes the veth ends and the bridge in it
            _ip("netns", "del", ns, check=False)
        left = set(_ip("netns", "list", check=False).stdout.split()) & set(self.namespaces)
        assert not left, f"namespaces left behind: {left}"


def slperf(*args: str) -> list[str]:
    return [sys.executable, "-m", "slperf.cli", *args]


def health(*args: str) -> list[str]:
    return [sys.executable, "-m", "slperf.healthcheck", *args]


def test_federation_across_namespaces(tmp_path):
    _require_netns()
    hosts = Hosts(f"10.213.{secrets.randbelow(200) + 20}")
    try:
        hosts.setup({"srv": 1, "op": 5, **{cid: 10 + i for i, cid in enumerate(CLIENTS, start=1)}})
        server_ip = hosts.address["srv"]
        for role in ("op", *CLIENTS):  # every host reaches the server over its own leg, and has no way out
            assert hosts.route_device(role, server_ip) == "eth0"
            assert "default" not in _ip("-n", hosts.ns(role), "route", "show").stdout

        # Certificates with the real CLI: the server's SAN is its namespace address.
        certs = tmp_path / "certs"
        made = subprocess.run(
            slperf("certs", "init", "--dir", str(certs), "--server-name", server_ip, "--server-name", "server"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr
        for cid in CLIENTS:
            made = subprocess.run(
                slperf("certs", "add-client", cid, "--dir", str(certs)), capture_output=True, text=True, timeout=120
            )
            assert made.returncode == 0, made.stderr

        address = f"{server_ip}:50051"
        server = hosts.spawn(
            "srv",
            slperf(
                "server",
                "--address",
                address,
                "--certs",
                str(certs),
                "--runs-dir",
                str(tmp_path / "runs"),
                "--torch-threads",
                "1",
            ),
            tmp_path / "server.log",
            stdout=subprocess.PIPE,
        )
        line = server.stdout.readline().decode().strip()
        assert line == f"{READY}50051", f"server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}"
        clients = {}
        for cid in CLIENTS:
            cert = certs / "clients" / f"{cid}.pem"
            key = certs / "clients" / f"{cid}.key"
            clients[cid] = hosts.spawn(
                cid,
                slperf(
                    "client",
                    "--server",
                    address,
                    "--id",
                    cid,
                    "--ca",
                    str(certs / "ca.pem"),
                    "--cert",
                    str(cert),
                    "--key",
                    str(key),
                    "--torch-threads",
                    "1",
                ),
                tmp_path / f"{cid}.log",
                stdout=subprocess.DEVNULL,
            )
        # Each daemon runs in its own namespace.
        for role, proc in (("srv", server), *clients.items()):
            assert _ip("netns", "identify", str(proc.pid)).stdout.strip() == hosts.ns(role)

        # Health from the operator's host (operator pair) and from a silo (its own pair), by the address in the SAN.
        ok = hosts.run("op", health("--server", address, "--certs", str(certs)), timeout=60)
        assert ok.returncode == 0 and ok.stdout.startswith("SERVING"), ok.stdout + ok.stderr
        ok = hosts.run(
            "c2",
            health(
                "--server",
                address,
                "--ca",
                str(certs / "ca.pem"),
                "--cert",
                str(certs / "clients" / "c2.pem"),
                "--key",
                str(certs / "clients" / "c2.key"),
            ),
            timeout=60,
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr

        # The operator starts the smoke run from its own host and follows it to the end.
        started = time.monotonic()
        run = hosts.run(
            "op", slperf("run", "--server", address, "--certs", str(certs), "--config", str(SMOKE)), timeout=400
        )
        run_seconds = time.monotonic() - started
        logs = {n: (tmp_path / f"{n}.log").read_text(errors="replace")[-1500:] for n in ("server", *CLIENTS)}
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{logs}"
        summary = json.loads(run.stdout[run.stdout.index("{") :])
        assert summary["clients"] == 3 and summary["rounds"] == 2
        assert sorted(summary["per_client"]) == list(CLIENTS)
        assert sum(c["samples"] for c in summary["per_client"].values()) == 600 * 2  # per round, summed
        assert summary["test_accuracy"] > 0.2, summary  # chance is 0.1
        run_dir = tmp_path / "runs" / summary["run_id"]
        assert json.loads((run_dir / "summary.json").read_text())["run_id"] == summary["run_id"]
        assert (run_dir / "checkpoint.pt").exists()

        # The server saw each client from that client's own namespace address.
        status = hosts.run("op", slperf("status", "--server", address, "--certs", str(certs), "--json"), timeout=60)
        assert status.returncode == 0, status.stderr
        peers = {c["clientId"]: c["peer"] for c in json.loads(status.stdout)["clients"]}
        for cid in CLIENTS:
            assert hosts.address[cid] in peers[cid], peers
        # The daemons stayed up between runs.
        assert server.poll() is None and all(p.poll() is None for p in clients.values())
        print(
            f"\nnetns federation: smoke run {run_seconds:.1f} s (server wall {summary['wall_seconds']:.1f} s), "
            f"test accuracy {summary['test_accuracy']:.3f}"
        )
    finally:
        hosts.close()
