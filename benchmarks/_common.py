"""Shared by the performance benchmarks: where results go, what the machine was doing, small statistics."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slperf.bench.machine import machine_info
from slperf.common.fsutil import atomic_write

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_result(name: str, data: dict[str, Any], results_dir: Path | None = None) -> Path:
    folder = Path(results_dir) if results_dir else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine_info(),
        **data,
        "note": "measured on a shared machine; timings are noisy (see machine.loadavg)",
    }
    path = folder / f"{name}.json"
    atomic_write(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    print(f"wrote {path}")
    return path


def median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def banner(title: str) -> None:
    load = machine_info().get("loadavg")
    suffix = f" (load average {load[0]:.1f} on {os.cpu_count()} CPUs: figures are noisy)" if load else ""
    print(f"== {title}{suffix}", flush=True)
