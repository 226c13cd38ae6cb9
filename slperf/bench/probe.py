"""Peak memory of the processes a local federation starts, for the benchmark's per-party memory figures.

``slperf.federation`` owns the server and client daemon processes and ends them in ``Federation.stop``. A
child's resident-set high-water mark (``VmHWM``) is readable only while it lives, so ``FederationProbe``
plugs into the launcher's ``FederationHooks``: ``on_started`` tells it the children (and optionally calls
back, e.g. to attach a profiler), ``before_stop`` reads every child's mark while all are still alive. While
the context is open a background thread also re-reads the marks every ``poll_seconds``, so a child that
dies before ``stop`` still has the last value seen.

    with FederationProbe() as probe:
        summary = run_federation(config, out, hooks=probe.hooks)
    probe.peaks  # {"server": bytes, "clients": {"c1": bytes, ...}}
    probe.cpu    # {"server": seconds, "c1": seconds, ...}: user + system CPU time of each process

The CPU time is read from ``/proc/<pid>/stat`` the same way (it only grows, so the last read is the total); a client
daemon in a container (``client_image``) is a process of this host too, so both figures cover it.

Nothing global is changed: each probe sees only the federation it was handed to, so probes may coexist.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from slperf.bench.memory import peak_rss_bytes
from slperf.federation import FederationHooks


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (all its threads), from /proc/<pid>/stat; None when unavailable."""
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    try:
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)
    except (IndexError, ValueError):
        return None


class _Process(Protocol):
    @property
    def pid(self) -> int: ...


class _Children(Protocol):
    """What the probe reads of a federation (``slperf.federation.Federation`` has both)."""

    @property
    def server(self) -> _Process | None: ...

    @property
    def clients(self) -> Mapping[str, _Process]: ...


class FederationProbe:
    """Records the peak RSS of a federation's server and client daemons (see the module docstring)."""

    def __init__(self, poll_seconds: float = 0.5, on_start: Callable[[Any], None] | None = None):
        self.poll_seconds = poll_seconds
        self.on_start = on_start
        self.server_peak: int | None = None
        self.client_peaks: dict[str, int] = {}
        self._cpu: dict[tuple[str, int], float] = {}  # (party, pid) -> CPU seconds: a restarted daemon adds its own
        self.pids: dict[str, int] = {}
        self._federation: _Children | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- public results -------------------------------------------------------------------------------
    @property
    def peaks(self) -> dict[str, Any]:
        with self._lock:
            return {"server": self.server_peak, "clients": dict(self.client_peaks)}

    @property
    def cpu(self) -> dict[str, float]:
        """CPU seconds by party (``server``, client ids), as last read."""
        out: dict[str, float] = {}
        with self._lock:
            for (name, _), seconds in self._cpu.items():
                out[name] = out.get(name, 0.0) + seconds
        return out

    @property
    def hooks(self) -> FederationHooks:
        """The callbacks to hand to ``run_federation`` (or a ``Federation``) so this probe sees its children."""
        return FederationHooks(on_started=self._started, before_stop=self._before_stop)

    # -- the launcher's hooks ---------------------------------------------------------------------------
    def _started(self, federation: _Children) -> None:
        self._federation = federation
        self.sample()
        if self.on_start is not None:
            self.on_start(federation)

    def _before_stop(self, federation: _Children) -> None:
        if federation is self._federation:
            self.sample()  # the exact peaks, while every child is still alive

    # -- sampling -------------------------------------------------------------------------------------
    def _children(self) -> list[tuple[str, _Process]]:
        fed = self._federation
        if fed is None:
            return []
        out: list[tuple[str, _Process]] = []
        if fed.server is not None:
            out.append(("server", fed.server))
        out.extend((cid, proc) for cid, proc in dict(fed.clients or {}).items())
        return out

    def sample(self) -> None:
        """Reads every live child's high-water mark now (a mark only grows, so the latest read wins)."""
        for name, proc in self._children():
            peak = peak_rss_bytes(proc.pid)
            cpu = cpu_seconds(proc.pid)
            if peak is None:
                continue
            with self._lock:
                if cpu is not None:
                    self._cpu[(name, proc.pid)] = max(self._cpu.get((name, proc.pid), 0.0), cpu)
                self.pids[name] = proc.pid
                if name == "server":
                    self.server_peak = max(self.server_peak or 0, peak)
                else:
                    self.client_peaks[name] = max(self.client_peaks.get(name, 0), peak)

    def _poll(self) -> None:
        while not self._stop_event.wait(self.poll_seconds):
            self.sample()

    # -- context --------------------------------------------------------------------------------------
    def __enter__(self) -> FederationProbe:
        if self._thread is not None:
            raise RuntimeError("this FederationProbe is already open")
        self._thread = threading.Thread(target=self._poll, name="slperf-rss-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
