"""Memory per virtual client of the simulation backend: splitfed_v1 on MNIST with LeNet, one round, at several client
counts, each in a fresh process.

    python -m benchmarks.bench_sim_clients [--clients 10 100 1000] [--samples-per-client 32]

Each child imports everything and loads MNIST (the shared copy every virtual client indexes into), reads its RSS
(``baseline``), runs the simulation to its end, and reads its peak RSS (VmHWM) and its RSS at the end. Per client:

* ``peak_per_client_kib``: (peak - baseline) / clients, everything a run of that size adds (the server's top copy
  per client of splitfed_v1 included, and the transient compute of a step);
* ``marginal_kib``: the slope of the peak between consecutive client counts, what one more client costs.

Every client holds ``--samples-per-client`` training samples (``max_train_samples`` = clients x that) and one
``batch_size`` batch per round; evaluation runs on ``max_test_samples`` samples. Results go to
benchmarks/results/bench_sim_clients.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import banner, write_result


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(clients: int, samples_per_client: int, out_dir: Path) -> dict[str, Any]:
    """One simulation of ``clients`` virtual clients in this process; its memory figures."""
    import torch

    from slperf.common.config import RunConfig
    from slperf.common.data import load_dataset
    from slperf.common.protocol.types import RunState
    from slperf.sim import simulate

    config = RunConfig(
        paradigm="splitfed_v1",
        dataset="mnist",
        model="lenet",
        clients=clients,
        epochs=1,
        batch_size=samples_per_client,
        max_train_samples=clients * samples_per_client,
        max_test_samples=500,
        eval_batch_size=250,
        lr=0.05,
        seed=0,
        torch_threads=1,
    )
    dataset = load_dataset("mnist")
    _ = dataset.arrays.train_x[:].sum(), dataset.arrays.test_x[:].sum()  # the shared pages resident, as in a run
    torch.ones(1) + 1  # torch's own start-up allocations counted in the baseline
    baseline = _status_kib("VmRSS")
    started = time.monotonic()
    run, sim = simulate(config, out_dir)
    seconds = time.monotonic() - started
    if run.state is not RunState.FINISHED:
        raise RuntimeError(f"{clients} clients: run {run.state.value}: {run.error}")
    peak, end = _status_kib("VmHWM"), _status_kib("VmRSS")
    return {
        "clients": clients,
        "baseline_rss_kib": baseline,
        "peak_rss_kib": peak,
        "end_rss_kib": end,
        "peak_per_client_kib": (peak - baseline) / clients,
        "end_per_client_kib": (end - baseline) / clients,
        "run_seconds": seconds,
        "test_accuracy": run.test_accuracy,
        "lost": sorted(sim.lost),
        "train_samples": config.max_train_samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--samples-per-client", type=int, default=32)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child: one client count
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(child(args.one, args.samples_per_client, args.out)), flush=True)
        return
    banner("simulation backend: memory per virtual client (splitfed_v1, MNIST, LeNet, 1 round)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows: list[dict[str, Any]] = []
    for clients in sorted(args.clients):
        with tempfile.TemporaryDirectory(prefix="slperf-bench-sim-") as tmp:
            argv = [sys.executable, "-m", "benchmarks.bench_sim_clients", "--one", str(clients), "--out", tmp]
            argv += ["--samples-per-client", str(args.samples_per_client)]
            done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{clients} clients failed: {done.stderr[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        baseline, peak = row["baseline_rss_kib"] / 1024, row["peak_rss_kib"] / 1024
        print(
            f"{clients:>6} clients: {row['run_seconds']:7.1f} s, RSS baseline {baseline:7.1f} MiB,"
            f" peak {peak:7.1f} MiB, {row['peak_per_client_kib']:7.1f} KiB/client at peak,"
            f" {row['end_per_client_kib']:7.1f} KiB/client held at the end",
            flush=True,
        )
    for low, high in zip(rows, rows[1:]):
        high["marginal_kib"] = (high["peak_rss_kib"] - low["peak_rss_kib"]) / (high["clients"] - low["clients"])
        print(f"  {low['clients']} -> {high['clients']} clients: {high['marginal_kib']:.1f} KiB per added client")
    write_result("bench_sim_clients", {"samples_per_client": args.samples_per_client, "rows": rows})


if __name__ == "__main__":
    main()
