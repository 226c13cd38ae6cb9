"""What the machine was and was doing when a benchmark ran, recorded beside its figures: the benchmarks run on
shared machines, so a reader needs the CPU count, the versions and the load average to judge the timings.
One helper for the research suite's report and the performance benchmarks' JSON results."""

from __future__ import annotations

import os
import platform
from typing import Any


def loadavg() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPUs, platform, Python, torch and grpcio versions, and the load average now (None where unknown)."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": loadavg(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except Exception:  # pragma: no cover - torch is a dependency
        pass
    try:
        import grpc

        info["grpcio"] = grpc.__version__
    except Exception:  # pragma: no cover - grpcio is a dependency
        pass
    return info
