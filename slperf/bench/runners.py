"""Cell runners: how one cell of a suite is measured. A federation cell is a real local federation
(``slperf.federation``: server and client daemons over mutual TLS on loopback) with its children's peak RSS read by
a ``FederationProbe``; a centralized cell runs ``python -m slperf.bench.centralized`` and reads its JSON progress
lines; both in processes of their own, so that peak memory and start-up cost are the cell's own. A sim cell
(``backend: sim`` in the cell's config) runs in this process (``slperf.sim``): no start-up to pay, which is the
point, and what a worker that runs many cells (a Ray task) wants; its peak RSS is this process's high-water mark,
reset at the cell's start where Linux allows. A runner returns the measured figures; ``slperf.bench.rows`` turns
them into a row.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from slperf.bench import privacy
from slperf.bench.memory import mib, peak_rss_bytes, reset_peak_rss, self_peak_rss_bytes
from slperf.bench.parties import party_columns, party_figures
from slperf.bench.probe import FederationProbe
from slperf.bench.rows import curve_from_metrics
from slperf.bench.suite import CENTRALIZED, Cell
from slperf.common.fsutil import atomic_write
from slperf.federation import RestartPolicy, run_federation
from slperf.slserver.run_folder import RunFolder

Echo = Callable[[str], None]
CellRunner = Callable[[Cell, Path], Mapping[str, Any]]


def _write_cell_config(cell: Cell, work_dir: Path) -> Path:
    path = work_dir / "configs" / f"{cell.slug}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# {cell.key} (config hash {cell.config_hash})\n"
    atomic_write(path, header + yaml.safe_dump(dict(cell.config), sort_keys=True))
    return path


def _attempt_folder(cell: Cell, work_dir: Path) -> Path:
    """A fresh runs folder for each attempt at a cell (``runs/<cell>-<time>-<random>``), federation or sim: a server
    resumes the newest unfinished run it finds in its runs folder, so a folder shared with a cell running at the same
    time (the Ray executor) or with an interrupted attempt would hand this cell's server someone else's run; the
    daemons' logs (``logs/`` in it, a simulation's ``sim.log``) stay the cell's own as well."""
    parent = work_dir / "runs"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{cell.slug}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=parent))


def run_federation_cell(
    cell: Cell,
    work_dir: Path,
    *,
    echo: Echo = print,
    show_progress: bool = True,
    restart: RestartPolicy | None = None,
) -> dict[str, Any]:
    """One cell as a real local federation; peak RSS of the server and of every client daemon is recorded, and
    so are the client daemons the federation had to restart or lost (a cell with either is not a clean
    measurement: its row says so in ``client_restarts`` and ``clients_lost``)."""
    config_path = _write_cell_config(cell, work_dir)
    started = time.monotonic()
    with FederationProbe() as probe:
        summary = run_federation(
            config_path,
            _attempt_folder(cell, work_dir),
            show_progress=show_progress,
            echo=echo,
            hooks=probe.hooks,
            restart=restart,
        )
    total = time.monotonic() - started
    peaks = probe.peaks
    client_peaks = {cid: mib(v) for cid, v in sorted(peaks["clients"].items())}
    values = [v for v in client_peaks.values() if v is not None]
    parties = party_figures(summary, probe.cpu, mib(peaks["server"]), client_peaks)
    return {
        **_run_figures(summary, total),
        "peak_rss_server_mb": mib(peaks["server"]),
        "peak_rss_client_max_mb": max(values) if values else None,
        "peak_rss_client_mean_mb": statistics.fmean(values) if values else None,
        "peak_rss_clients_mb": client_peaks,
        "parties": parties,
        **party_columns(parties),
        "client_restarts": sum(summary["supervisor"]["restarts"].values()),
        "clients_lost": sorted(summary["supervisor"]["lost"]),
    }


def _run_figures(summary: Mapping[str, Any], total: float) -> dict[str, Any]:
    """What a federation and a simulation cell report alike, from the run's summary and its metrics.jsonl."""
    curve = curve_from_metrics(RunFolder(Path(summary["run_dir"])).read_metrics())
    return {
        "run_dir": summary["run_dir"],
        "run_id": summary.get("run_id"),
        "rounds": summary.get("rounds", len(curve)),
        "final_accuracy": summary.get("test_accuracy"),
        "best_accuracy": summary.get("best_test_accuracy"),
        "bytes_up": summary.get("bytes_up"),
        "bytes_down": summary.get("bytes_down"),
        "train_bytes_up": summary.get("train_bytes_up"),
        "train_bytes_down": summary.get("train_bytes_down"),
        "train_seconds": sum(p["round_seconds"] for p in curve),
        "run_seconds": summary.get("wall_seconds"),
        "total_seconds": total,
        "server_compute_seconds": summary.get("server_compute_seconds"),
        **({"network_links": summary["network"]["links"]} if summary.get("network") else {}),
        "curve": curve,
        "privacy": summary.get("privacy"),  # the final round's leakage figures; None: the cell ran no attack
        # found where the cell ran (on a Ray cluster, the worker's node: the driver may not see its run folder)
        privacy.GRID_COLUMN: privacy.final_grid(summary["run_dir"]),
    }


def run_sim_cell(cell: Cell, work_dir: Path, *, echo: Echo = print, show_progress: bool = True) -> dict[str, Any]:
    """One cell as a simulation in this process; the keys of ``run_federation_cell``'s result. Every party shares
    the process, so its peak RSS is given as ``peak_rss_process_mb`` (and as the server's, the client fields being
    None): the high-water mark from this cell's start when the kernel lets a process reset it (Linux), else the
    process's lifetime peak, which earlier cells in the same process may have set."""
    from slperf.sim import run_simulation

    config_path = _write_cell_config(cell, work_dir)
    started = time.monotonic()
    reset = reset_peak_rss()
    # Its own folder too: two sim cells in one Ray worker node must not share a run folder or a log file.
    summary = run_simulation(config_path, _attempt_folder(cell, work_dir), show_progress=show_progress, echo=echo)
    total = time.monotonic() - started
    peak = peak_rss_bytes(os.getpid()) if reset else self_peak_rss_bytes()
    return {
        **_run_figures(summary, total),
        "peak_rss_server_mb": mib(peak),
        "peak_rss_process_mb": mib(peak),
        "peak_rss_client_max_mb": None,
        "peak_rss_client_mean_mb": None,
        "peak_rss_clients_mb": {},
        "client_restarts": 0,
        "clients_lost": sorted(summary["supervisor"]["lost"]),
        "backend": "sim",
    }


def _centralized_process(
    cell: Cell, config_path: Path, out_path: Path, log_path: Path, *, echo: Echo, show_progress: bool
) -> int:
    """Runs ``python -m slperf.bench.centralized`` and follows its JSON epoch lines (a bar, or one echoed line
    per epoch); stderr goes to the log. Returns the exit code."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=cell.epochs, desc=CENTRALIZED, unit="epoch", file=sys.stderr, leave=False)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slperf.bench.centralized", str(config_path), "--out", str(out_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "epoch":
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(acc=f"{100 * event['test_accuracy']:.2f}%")
                else:
                    echo(f"epoch {event['round']}/{cell.epochs}: test accuracy {100 * event['test_accuracy']:.2f}%")
        code = proc.wait()
    if bar is not None:
        bar.close()
    return code


def run_centralized_cell(
    cell: Cell, work_dir: Path, *, echo: Echo = print, show_progress: bool = True
) -> dict[str, Any]:
    """The centralized baseline in its own process (so its peak RSS is its own), one JSON line per epoch."""
    config_path = _write_cell_config(cell, work_dir)
    out_path = work_dir / "centralized" / f"{cell.slug}.json"
    log_path = work_dir / "centralized" / f"{cell.slug}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    code = _centralized_process(cell, config_path, out_path, log_path, echo=echo, show_progress=show_progress)
    if code != 0:
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        raise RuntimeError(f"centralized baseline exited with code {code}: {tail}")
    result = json.loads(out_path.read_text())
    return {
        "rounds": result["rounds"],
        "final_accuracy": result["test_accuracy"],
        "best_accuracy": result["best_test_accuracy"],
        "bytes_up": 0,
        "bytes_down": 0,
        "train_bytes_up": 0,
        "train_bytes_down": 0,
        "train_seconds": result["train_seconds"],
        "run_seconds": result.get("process_seconds"),
        "total_seconds": time.monotonic() - started,
        "peak_rss_server_mb": None,
        "peak_rss_client_max_mb": mib(result.get("peak_rss_bytes")),
        "peak_rss_client_mean_mb": mib(result.get("peak_rss_bytes")),
        "run_dir": str(out_path),
        "curve": result["curve"],
    }


def default_runner(
    cell: Cell,
    work_dir: Path,
    *,
    echo: Echo = print,
    show_progress: bool = True,
    restart: RestartPolicy | None = None,
) -> dict[str, Any]:
    """A centralized cell in its own process, any other as its config's ``backend`` says: a local federation
    (``restart``: what it does about a client daemon that exits; default ``RestartPolicy()``) or, for ``sim``, a
    simulation in this process (``restart`` means nothing there: no process is started)."""
    if cell.paradigm == CENTRALIZED:
        return run_centralized_cell(cell, work_dir, echo=echo, show_progress=show_progress)
    if cell.config.get("backend", "federation") == "sim":
        return run_sim_cell(cell, work_dir, echo=echo, show_progress=show_progress)
    return run_federation_cell(cell, work_dir, echo=echo, show_progress=show_progress, restart=restart)
