"""Peak memory of the processes a local federation starts, for the benchmark (DESIGN §1: memory per party).

``slperf.federation`` owns the server and client daemon processes and ends them in ``Federation.stop``. Linux
keeps each process's resident-set high-water mark in ``/proc/<pid>/status`` (``VmHWM``) until it exits, so the
exact peak is read just before ``stop`` ends the children. ``FederationProbe`` does that without changing
``slperf.federation``: while the context is open it wraps ``Federation.start`` (to learn the children's pids
and optionally call back, e.g. to attach a profiler) and ``Federation.stop`` (to read every child's VmHWM
first); a background thread also re-reads the marks every ``poll_seconds``, so a child that dies before
``stop`` still has the last value seen. The wrappers are removed when the context closes.

    with FederationProbe() as probe:
        summary = run_federation(config, out)
    probe.peaks  # {"server": bytes, "clients": {"c1": bytes, ...}}

Only one probe may be open at a time in a process (the benchmark runs its cells one after another).
"""
from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path
from typing import Any, Callable

_PROBE_LOCK = threading.Lock()


def read_status_kib(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmHWM, VmRSS, ...) in KiB; None when unavailable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            try:
                return int(parts[1])
            except (IndexError, ValueError):
                return None
    return None


def peak_rss_bytes(pid: int) -> int | None:
    """The resident-set high-water mark of a live process (VmHWM) in bytes, or None (gone, not Linux)."""
    kib = read_status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def self_peak_rss_bytes() -> int:
    """This process's own peak RSS (getrusage: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class FederationProbe:
    """Records the peak RSS of a federation's server and client daemons (see the module docstring)."""

    def __init__(self, poll_seconds: float = 0.5, on_start: Callable[[Any], None] | None = None):
        self.poll_seconds = poll_seconds
        self.on_start = on_start
        self.server_peak: int | None = None
        self.client_peaks: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self._federation: Any = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._originals: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    # -- public results -------------------------------------------------------------------------------
    @property
    def peaks(self) -> dict[str, Any]:
        with self._lock:
            return {"server": self.server_peak, "clients": dict(self.client_peaks)}

    # -- sampling -------------------------------------------------------------------------------------
    def _children(self) -> list[tuple[str, Any]]:
        fed = self._federation
        if fed is None:
            return []
        out: list[tuple[str, Any]] = []
        if getattr(fed, "server", None) is not None:
            out.append(("server", fed.server))
        out.extend((cid, proc) for cid, proc in dict(getattr(fed, "clients", {}) or {}).items())
        return out

    def sample(self) -> None:
        """Reads every live child's high-water mark now (a mark only grows, so the latest read wins)."""
        for name, proc in self._children():
            peak = peak_rss_bytes(proc.pid)
            if peak is None:
                continue
            with self._lock:
                self.pids[name] = proc.pid
                if name == "server":
                    self.server_peak = max(self.server_peak or 0, peak)
                else:
                    self.client_peaks[name] = max(self.client_peaks.get(name, 0), peak)

    def _poll(self) -> None:
        while not self._stop_event.wait(self.poll_seconds):
            self.sample()

    # -- context --------------------------------------------------------------------------------------
    def __enter__(self) -> "FederationProbe":
        from slperf import federation as fed_module

        if not _PROBE_LOCK.acquire(blocking=False):
            raise RuntimeError("another FederationProbe is already open in this process")
        try:
            cls = fed_module.Federation
            original_start, original_stop = cls.start, cls.stop
            probe = self

            def start(fed, *args, **kwargs):
                probe._federation = fed
                result = original_start(fed, *args, **kwargs)
                probe.sample()
                if probe.on_start is not None:
                    probe.on_start(fed)
                return result

            def stop(fed, *args, **kwargs):
                if fed is probe._federation:
                    probe.sample()  # the exact peaks, while every child is still alive
                return original_stop(fed, *args, **kwargs)

            cls.start, cls.stop = start, stop
            self._originals = (original_start, original_stop)
            self._thread = threading.Thread(target=self._poll, name="slperf-rss-probe", daemon=True)
            self._thread.start()
        except BaseException:
            if self._originals is not None:
                fed_module.Federation.start, fed_module.Federation.stop = self._originals
                self._originals = None
            _PROBE_LOCK.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        from slperf import federation as fed_module

        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._originals is not None:
            fed_module.Federation.start, fed_module.Federation.stop = self._originals
            self._originals = None
        _PROBE_LOCK.release()


def mib(value: int | None) -> float | None:
    return None if value is None else value / (1 << 20)


def loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None
