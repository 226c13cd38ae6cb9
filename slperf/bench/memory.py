"""Peak memory readings for the benchmarks: a live process's resident-set high-water mark from
``/proc/<pid>/status`` (Linux keeps ``VmHWM`` until the process exits, so the exact peak can be read just
before a process is ended), and this process's own peak from getrusage.

Kept apart from the federation probe and free of heavy imports, because it is also imported inside measured
processes (the centralized baseline, the instrumented daemons), whose own peak must not include what it pulls in.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


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


def reset_peak_rss() -> bool:
    """Resets this process's VmHWM to its current RSS (Linux: ``5`` into /proc/self/clear_refs), so a later
    ``peak_rss_bytes(os.getpid())`` is the peak since now; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def mib(value: int | None) -> float | None:
    return None if value is None else value / (1 << 20)
