"""Client daemons behind shaped links: the placement ``slperf.federation`` uses when a run says ``network:``.

Each client daemon runs in a namespace of its own, on a star around a bridge; a ``gateway`` namespace on the same
bridge holds one relay per client. A client dials its relay over its own link (``tc tbf`` at the profile's rate on
both ends); the relay adds the profile's one-way delay each way and connects to the server on the root
namespace's loopback (``--upstream-netns``), where the launcher and its operator reach it as on an unshaped run.
Before the run, ``measure`` times a bulk transfer each way over every client's link and a ping through a relay
with its delay, so the report carries the rate and round trip the client really had.

Everything it makes is removed by ``close`` (processes by pid, namespaces with their links), also after a
failure; ``build`` first sweeps what an earlier, killed owner left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from slperf.common.network_profile import LinkProfile, NetworkSpec
from slperf.netshape import measure, relay
from slperf.netshape.lines import Lines
from slperf.netshape.namespaces import preflight, sweep_leftovers
from slperf.netshape.topology import Topology

GATEWAY = "gateway"
READY_TIMEOUT = 60.0  # a Python start on a loaded machine
MEASURE_SECONDS = 1.0  # the bulk transfer lasts about this long each way at the configured rate
MIN_MEASURE_BYTES = 256 * 1024
MAX_MEASURE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class LinkMeasurement:
    """What one client's link did in the measurement: rates each way (Mbit/s) and round trips (ms)."""

    client: str
    profile: str
    rate_mbit: float | None
    delay_ms: float
    up_mbit: float
    down_mbit: float
    rtt_link_ms: float
    rtt_path_ms: float | None
    bytes: int

    def as_record(self) -> dict[str, object]:
        return asdict(self)


def measure_bytes(profile: LinkProfile) -> int:
    """About ``MEASURE_SECONDS`` of the profile's rate, within bounds (an unlimited link gets the upper one)."""
    rate = profile.rate_bytes_per_s
    if rate is None:
        return MAX_MEASURE_BYTES
    return int(min(MAX_MEASURE_BYTES, max(MIN_MEASURE_BYTES, rate * MEASURE_SECONDS)))


class ShapedClients:
    """One namespace and one shaped link per client; ``client_endpoint`` is the federation's placement hook."""

    def __init__(
        self,
        spec: NetworkSpec,
        client_ids: Sequence[str],
        logs_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.client_ids = list(client_ids)
        self.logs_dir = logs_dir
        self.env = dict(env if env is not None else os.environ)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.topology = Topology([GATEWAY, *self.client_ids])
        self._relays: dict[str, str] = {}  # client id -> the relay's HOST:PORT in the gateway

    # -- life cycle --------------------------------------------------------------------------------------
    def build(self) -> ShapedClients:
        preflight(need_tc=True)
        sweep_leftovers()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.topology.build()
        try:
            for cid in self.client_ids:
                rate = self.spec.for_client(cid).rate_mbit
                if rate is not None:
                    self.topology.shape(cid, rate)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.topology.close()
        self._relays.clear()

    def __enter__(self) -> ShapedClients:
        return self.build()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def leftovers(self) -> list[str]:
        return self.topology.leftovers()

    # -- processes in the gateway ------------------------------------------------------------------------
    def _python(self, host: str, args: Sequence[str], log: str) -> tuple[subprocess.Popen[bytes], Lines]:
        proc = self.topology.popen(
            host, [sys.executable, *args], log=self.logs_dir / log, capture_stdout=True, env=self.env
        )
        assert proc.stdout is not None
        return proc, Lines(proc.stdout)

    def _start_relay(
        self, name: str, to: str, delay_ms: float, *, upstream_netns: str | None
    ) -> tuple[str, subprocess.Popen[bytes]]:
        gateway = self.topology.address(GATEWAY)
        args = ["-m", "slperf.netshape.relay", "--listen", f"{gateway}:0", "--to", to, "--delay-ms", f"{delay_ms:g}"]
        if upstream_netns is not None:
            args += ["--upstream-netns", upstream_netns]
        proc, out = self._python(GATEWAY, args, f"relay-{name}.log")
        try:
            ready = out.wait_for(relay.READY, READY_TIMEOUT)
        except (EOFError, TimeoutError) as exc:
            raise RuntimeError(f"the relay for {name} did not start ({exc}); see {self.logs_dir}") from None
        return ready[len(relay.READY) :], proc

    def client_endpoint(self, client_id: str, server_port: int) -> tuple[list[str], str]:
        """The argv prefix that runs a client daemon in its namespace, and the address it dials (its relay,
        started at its first call: the server's port is known only then)."""
        if client_id not in self._relays:
            delay = self.spec.for_client(client_id).delay_ms
            own = f"/proc/{os.getpid()}/ns/net"  # the launcher's namespace: where the server listens
            self._relays[client_id], _ = self._start_relay(
                client_id, f"127.0.0.1:{server_port}", delay, upstream_netns=own
            )
        return ["ip", "netns", "exec", self.topology.ns(client_id)], self._relays[client_id]

    # -- measuring ---------------------------------------------------------------------------------------
    def measure(self) -> list[LinkMeasurement]:
        """Every client's link: a bulk transfer each way to a sink in the gateway, and pings through a relay with
        the client's delay (started for the measurement and stopped after it)."""
        gateway = self.topology.address(GATEWAY)
        temporary: list[subprocess.Popen[bytes]] = []
        sink, sink_out = self._python(
            GATEWAY, ["-m", "slperf.netshape.measure", "sink", "--listen", f"{gateway}:0"], "measure-sink.log"
        )
        temporary.append(sink)
        try:
            sink_addr = sink_out.wait_for(measure.READY, READY_TIMEOUT)[len(measure.READY) :]
            results = []
            for cid in self.client_ids:
                profile = self.spec.for_client(cid)
                path, path_relay = self._start_relay(f"measure-{cid}", sink_addr, profile.delay_ms, upstream_netns=None)
                temporary.append(path_relay)
                n = measure_bytes(profile)
                args = [
                    "-m",
                    "slperf.netshape.measure",
                    "probe",
                    "--link",
                    sink_addr,
                    "--path",
                    path,
                    "--bytes",
                    str(n),
                ]
                proc, out = self._python(cid, args, f"measure-{cid}.log")
                temporary.append(proc)
                line = out.wait_for(measure.RESULT, 300)
                proc.wait(timeout=30)
                figures = json.loads(line[len(measure.RESULT) :])
                results.append(
                    LinkMeasurement(
                        client=cid,
                        profile=profile.label,
                        rate_mbit=profile.rate_mbit,
                        delay_ms=profile.delay_ms,
                        up_mbit=figures["up_mbit"],
                        down_mbit=figures["down_mbit"],
                        rtt_link_ms=figures["rtt_link_ms"],
                        rtt_path_ms=figures["rtt_path_ms"],
                        bytes=n,
                    )
                )
            return results
        except (EOFError, TimeoutError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
            raise RuntimeError(f"measuring the shaped links failed ({exc}); see {self.logs_dir}") from None
        finally:
            # The measurement's own processes end here (close() collects them); the client relays stay for the run.
            for proc in temporary:
                if proc.poll() is None:
                    proc.terminate()
