"""Scaling: `splitfed_v1` (and `psl` when registered) with 1, 2, 4, 8, 16, 32 client daemons on this machine,
each a separate process over mutual TLS on loopback, with small shards.

    python -m benchmarks.bench_scaling [--clients 1 2 4 8 16 32] [--paradigms splitfed_v1 psl]
                                       [--per-client 256] [--epochs 2]

Per run it reports: training throughput (samples/s over the rounds, evaluation included), the server's peak
RSS and that divided by the number of clients, plus the marginal server memory per extra client (slope over
the client counts), the clients' peak RSS, and messages lost. Lost messages are counted from the transport's
own counters on both ends (``benchmarks._instrumented`` exposes every session's ``ByteCounter``): for each
client, envelopes it sent vs envelopes the server received from it (minus the Hello, which the server reads
before its session counter exists), and envelopes the server sent it vs envelopes it received. They must be 0;
so must the difference between the samples each client reports and its shard size x rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import banner, write_result


def _federation_class():
    from slperf.federation import Federation

    @dataclass
    class InstrumentedFederation(Federation):
        counts_dir: Path | None = None

        def _cmd(self, *args: str) -> list[str]:
            name = "server" if args[0] == "server" else args[args.index("--id") + 1]
            return [sys.executable, "-m", "benchmarks._instrumented", str(self.counts_dir), name, *args]

        def _env(self) -> dict[str, str]:
            env = super()._env()
            root = str(Path(__file__).resolve().parent.parent)
            env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            return env

    return InstrumentedFederation


def collect_counts(fed, counts_dir: Path, timeout: float = 30.0) -> dict[str, dict]:
    """Asks every child to dump its counters (SIGUSR1) and reads the files."""
    for path in counts_dir.glob("*.json"):
        path.unlink()
    procs = {"server": fed.server, **fed.clients}
    for proc in procs.values():
        os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    out: dict[str, dict] = {}
    while time.monotonic() < deadline and len(out) < len(procs):
        for name in procs:
            path = counts_dir / f"{name}.json"
            if name not in out and path.exists():
                out[name] = json.loads(path.read_text())
        time.sleep(0.05)  # waiting for files the children write on the signal
    return out


def lost_messages(counts: dict[str, dict]) -> dict[str, Any]:
    server = counts.get("server")
    if server is None:
        return {"error": "the server did not report its counters"}
    per_client: dict[str, Any] = {}
    total = 0
    for name, data in counts.items():
        if name == "server":
            continue
        sent = sum(s["sent"] for s in data["sessions"])
        received = sum(s["received"] for s in data["sessions"])
        sessions = len(data["sessions"])
        srv = [s for s in server["sessions"] if s["client_id"] == name]
        srv_received = sum(s["received"] for s in srv)
        srv_sent = sum(s["sent"] for s in srv)
        up_lost = sent - sessions - srv_received  # every session opens with a Hello the server reads uncounted
        down_lost = srv_sent - received
        total += abs(up_lost) + abs(down_lost)
        per_client[name] = {
            "client_sent": sent,
            "server_received": srv_received,
            "server_sent": srv_sent,
            "client_received": received,
            "sessions": sessions,
            "lost_up": up_lost,
            "lost_down": down_lost,
        }
    return {"total": total, "per_client": per_client}


def run_one(paradigm: str, clients: int, per_client: int, epochs: int, batch_size: int, work: Path) -> dict[str, Any]:
    from slperf.bench.memory import mib, peak_rss_bytes
    from slperf.common.config_loader import load_config
    from slperf.common.data import load_dataset
    from slperf.slserver.run_folder import RunFolder

    raw = {
        "paradigm": paradigm,
        "dataset": "mnist",
        "clients": clients,
        "model": "lenet",
        "split_layer": 1,
        "batch_size": batch_size,
        "epochs": epochs,
        "lr": 0.05,
        "seed": 0,
        "partition_method": "homo",
        "max_train_samples": per_client * clients,
        "max_test_samples": 500,
        "torch_threads": 1,
        "client_timeout": 1200.0,
        "client_ids": [f"c{i + 1}" for i in range(clients)],
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config, _ = load_config(path)
    load_dataset(config.dataset, config.data_dir)
    counts_dir = work / "counts"
    certs = work / "certs"
    cls = _federation_class()
    fed = cls(config=config, out_dir=work / "runs", certs_dir=certs, torch_threads=1, counts_dir=counts_dir)
    started = time.monotonic()
    try:
        fed.start()
        op = fed.operator()
        run_id = op.start_run(yaml.safe_dump(config.to_dict()))
        status = op.follow(run_id, lambda record: None, reconnect_timeout=30)
        op.close()
        if status.state != "finished":
            raise RuntimeError(f"run {run_id} {status.state}: {status.error}")
        time.sleep(1.0)  # let the last envelopes (Finish) land before the counters are read
        counts = collect_counts(fed, counts_dir)
        server_peak = peak_rss_bytes(fed.server.pid)
        client_peaks = [peak_rss_bytes(p.pid) for p in fed.clients.values()]
    finally:
        fed.stop()
    total_seconds = time.monotonic() - started
    summary = json.loads(status.summary_json)
    records = RunFolder(work / "runs" / run_id).read_metrics()
    samples = sum(c["samples"] for c in summary["per_client"].values())
    train_seconds = sum(r["round_seconds"] for r in records)
    last = records[-1]
    last_samples = sum(c["samples"] for c in last["per_client"].values())
    expected_samples = per_client * clients * epochs
    lost = lost_messages(counts)
    client_values = [v for v in client_peaks if v is not None]
    result = {
        "paradigm": paradigm,
        "clients": clients,
        "samples_per_client": per_client,
        "epochs": epochs,
        "batch_size": batch_size,
        "samples_per_second": samples / train_seconds if train_seconds else None,
        "samples_per_second_last_round": last_samples / last["round_seconds"] if last["round_seconds"] else None,
        "train_seconds": train_seconds,
        "total_seconds": total_seconds,
        "test_accuracy": summary["test_accuracy"],
        "server_peak_rss_mb": mib(server_peak),
        "server_rss_per_client_mb": mib(server_peak) / clients if server_peak else None,
        "client_peak_rss_mean_mb": mib(int(statistics.fmean(client_values))) if client_values else None,
        "samples_trained": samples,
        "samples_expected": expected_samples,
        "samples_missing": expected_samples - samples,
        "messages_lost": lost.get("total"),
        "message_counts": lost,
        "bytes_up": summary["bytes_up"],
        "bytes_down": summary["bytes_down"],
        "dropped": sorted({cid for r in records for cid in r.get("dropped", [])}),
    }
    return result


def run(paradigms: list[str], clients: list[int], per_client: int, epochs: int, batch_size: int) -> dict[str, Any]:
    from slperf.common.paradigms import registry

    banner("scaling: client daemons on one machine (separate processes, mutual TLS, loopback)")
    known = {s.name for s in registry.all_specs()}
    wanted = [p for p in paradigms if p in known]
    skipped = [p for p in paradigms if p not in known]
    runs: list[dict[str, Any]] = []
    for paradigm in wanted:
        for n in clients:
            with tempfile.TemporaryDirectory(prefix="slperf-scaling-") as tmp:
                try:
                    result = run_one(paradigm, n, per_client, epochs, batch_size, Path(tmp))
                except Exception as exc:  # record and go on: a benchmark, not a test
                    result = {"paradigm": paradigm, "clients": n, "error": f"{type(exc).__name__}: {exc}"}
            runs.append(result)
            if "error" in result:
                print(f"{paradigm:>12} x{n:>2}: FAILED {result['error']}", flush=True)
                continue
            print(
                f"{paradigm:>12} x{n:>2}: {result['samples_per_second']:8.0f} samples/s, server peak "
                f"{result['server_peak_rss_mb']:.0f} MB ({result['server_rss_per_client_mb']:.1f} MB/client), "
                f"client peak {result['client_peak_rss_mean_mb']:.0f} MB, messages lost {result['messages_lost']}, "
                f"samples missing {result['samples_missing']}, {result['total_seconds']:.0f} s total",
                flush=True,
            )
    marginal: dict[str, float | None] = {}
    for paradigm in wanted:
        pts = [
            (r["clients"], r["server_peak_rss_mb"])
            for r in runs
            if r["paradigm"] == paradigm and r.get("server_peak_rss_mb") is not None
        ]
        if len(pts) >= 2:
            xs, ys = zip(*pts)
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            den = sum((x - mx) ** 2 for x in xs)
            marginal[paradigm] = sum((x - mx) * (y - my) for x, y in pts) / den if den else None
            print(f"{paradigm}: marginal server memory ≈ {marginal[paradigm]:.2f} MB per extra client", flush=True)
    return {
        "runs": runs,
        "skipped_paradigms": skipped,
        "marginal_server_mb_per_client": marginal,
        "all_messages_delivered": all(r.get("messages_lost") == 0 for r in runs if "error" not in r),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--paradigms", nargs="+", default=["splitfed_v1", "psl"])
    parser.add_argument("--per-client", type=int, default=256, help="training samples per client")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    result = run(args.paradigms, args.clients, args.per_client, args.epochs, args.batch_size)
    write_result("scaling", result, args.results_dir)
    return result


if __name__ == "__main__":
    main()
