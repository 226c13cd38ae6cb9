"""Per-party figures of a federation cell: what the server and each client daemon asked of its machine (CPU time,
peak memory) and, for client daemons in containers (``client_image``), the limits their containers got and their
own compute per training batch, so a reader sees what each paradigm asks of a weak client.

``party_figures`` builds them from the run's summary (``client_containers``, written by the launcher from each
daemon's metrics endpoint and its container's HostConfig) and the probe's readings; ``parties_markdown`` is the
report's section. A client's ``train_ms_per_batch`` is the daemon's compute (pass time less its waits on the link)
over its training steps, so a limit that slows the client shows there even when the link sets the round's pace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def party_figures(
    summary: Mapping[str, Any],
    cpu: Mapping[str, float],
    server_peak_mb: float | None,
    client_peaks_mb: Mapping[str, float | None],
) -> dict[str, dict[str, Any]]:
    """``{"server": {...}, "c1": {...}, ...}``: cpu_seconds and peak_rss_mb for every party; for a client in a
    container also cpus / memory_mb (its limits; None = unlimited), train_ms_per_batch and train_steps."""
    containers = (summary.get("client_containers") or {}).get("clients", {})
    out: dict[str, dict[str, Any]] = {"server": {"cpu_seconds": cpu.get("server"), "peak_rss_mb": server_peak_mb}}
    for cid in sorted({*client_peaks_mb, *containers, *(k for k in cpu if k != "server")}):
        figures: dict[str, Any] = {"cpu_seconds": cpu.get(cid), "peak_rss_mb": client_peaks_mb.get(cid)}
        if cid in containers:
            c = containers[cid]
            limits = c.get("limits") or {}
            figures.update(
                cpus=limits.get("cpus"),
                memory_mb=limits.get("memory_mb"),
                train_ms_per_batch=c.get("train_ms_per_batch"),
                train_core_share=c.get("train_core_share"),
                train_steps=c.get("train_steps"),
            )
        out[cid] = figures
    return out


def party_columns(parties: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The flat columns of a row (results.csv): the server's CPU time, the largest client CPU time and the slowest
    client's compute per batch."""
    clients = [f for name, f in parties.items() if name != "server"]
    cpu = [f["cpu_seconds"] for f in clients if f.get("cpu_seconds") is not None]
    per_batch = [f["train_ms_per_batch"] for f in clients if f.get("train_ms_per_batch") is not None]
    return {
        "cpu_seconds_server": (parties.get("server") or {}).get("cpu_seconds"),
        "cpu_seconds_client_max": max(cpu) if cpu else None,
        "client_train_ms_per_batch_max": max(per_batch) if per_batch else None,
    }


def _cell(value: Any, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _limit(figures: Mapping[str, Any]) -> str:
    if "cpus" not in figures:
        return "host process"
    parts = [
        f"{figures['cpus']:g} cpus" if figures.get("cpus") else "",
        f"{figures['memory_mb']} MiB" if figures.get("memory_mb") else "",
    ]
    return ", ".join(p for p in parts if p) or "container, unlimited"


def parties_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's per-party section (lines), one table per finished federation cell that has party figures;
    empty when none has."""
    cells = [r for r in rows if r.get("status") == "ok" and r.get("parties")]
    if not cells:
        return []
    out = [
        "## Per-party compute and memory",
        "",
        "Per cell, each party: its limits (client daemons in containers: `client_resources`), CPU time (user + "
        "system, /proc), peak RSS (VmHWM) and, for a client in a container, its own compute per training batch "
        "(the pass time less its waits on the link, from the daemon's metrics) and the share of a core it got while "
        "computing (its CPU time over that compute time: at most its `cpus` limit).",
        "",
    ]
    for row in cells:
        out += [
            f"### {row['key']}",
            "",
            "| party | limits | CPU (s) | peak RSS (MB) | train compute / batch (ms) | core share | batches |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, f in row["parties"].items():
            limit = "host process" if name == "server" else _limit(f)
            out.append(
                f"| {name} | {limit} | {_cell(f.get('cpu_seconds'), 1)} | {_cell(f.get('peak_rss_mb'), 0)} | "
                f"{_cell(f.get('train_ms_per_batch'), 2)} | {_cell(f.get('train_core_share'), 2)} | "
                f"{_cell(f.get('train_steps'), 0)} |"
            )
        out.append("")
    return out
