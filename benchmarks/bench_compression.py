"""Compression of cut tensors: bytes per client per round and accuracy, per codec and paradigm, against float32.

    python -m benchmarks.bench_compression [--paradigms vanilla splitfed_v1 ushaped] [--codecs fp16 bf16 int8 ...]
                                           [--samples 3000] [--epochs 2] [--clients 3] [--no-async]

Each cell is one local federation (``slperf.federation``: a server and client daemons as separate processes over
mutual-TLS gRPC on loopback) on MNIST, IID (``homo``), with the same seed, data and rounds; the codec is the run
config's ``compress: {up: C, down: C}`` (both directions). Bytes are the server's own count of the wire bytes of
every message of the run (cut tensors, their replies, weights, instructions), per client per round, so a
paradigm that also moves weights (splitfed_v1) saves less than the cut tensors alone; ``cut bytes`` are those of
the training passes only (train_bytes_up + train_bytes_down, still including the weights sent around each pass).
Accuracy change = the codec's final (best) test accuracy minus float32's, in points.

The ``async`` part follows Chen et al. (loss-based skipping + 8-bit cut tensors, one client): ``vanilla`` float32,
``async`` float32 (skipping alone) and ``async`` with int8 both ways, each with one client.

Writes benchmarks/results/bench_compression.json and prints the tables.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import banner, write_result

DEFAULT_CODECS = ["none", "fp16", "bf16", "int8", "int8:channel", "topk:0.1", "topk:0.1:ef"]


def make_config(paradigm: str, codec: str, *, samples: int, epochs: int, clients: int, seed: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "paradigm": paradigm,
        "dataset": "mnist",
        "partition_method": "homo",
        "clients": clients,
        "model": "lenet",
        "split_layer": 1,
        "batch_size": 64,
        "epochs": epochs,
        "lr": 0.05,
        "momentum": 0.9,
        "seed": seed,
        "max_train_samples": samples,
        "max_test_samples": 2000,
        "eval_batch_size": 500,
        "torch_threads": 1,
    }
    if codec != "none":
        config["compress"] = {"up": codec, "down": codec}
    return config


def run_cell(config: dict[str, Any], work: Path) -> dict[str, Any]:
    from slperf.federation import run_federation

    name = f"{config['paradigm']}-{config.get('compress', {}).get('up', 'none')}-{config['clients']}".replace(":", "_")
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run_federation(path, work / name, show_progress=False, echo=lambda _m: None)
    rounds = summary["rounds"]
    clients = summary["clients"]
    per = clients * rounds
    return {
        "paradigm": config["paradigm"],
        "codec": config.get("compress", {}).get("up", "none"),
        "clients": clients,
        "rounds": rounds,
        "bytes_per_client_round": (summary["bytes_up"] + summary["bytes_down"]) / per,
        "bytes_up_per_client_round": summary["bytes_up"] / per,
        "bytes_down_per_client_round": summary["bytes_down"] / per,
        "train_bytes_per_client_round": (summary["train_bytes_up"] + summary["train_bytes_down"]) / per,
        "final_accuracy": summary["test_accuracy"],
        "best_accuracy": summary["best_test_accuracy"],
        "wall_seconds": summary["wall_seconds"],
    }


def with_baseline(cells: list[dict[str, Any]]) -> None:
    """Adds ratios and accuracy changes against the same paradigm's float32 cell."""
    base = {c["paradigm"]: c for c in cells if c["codec"] == "none"}
    for cell in cells:
        ref = base.get(cell["paradigm"])
        if ref is None:
            continue
        cell["bytes_vs_fp32"] = cell["bytes_per_client_round"] / ref["bytes_per_client_round"]
        cell["train_bytes_vs_fp32"] = cell["train_bytes_per_client_round"] / ref["train_bytes_per_client_round"]
        cell["final_accuracy_change_points"] = 100 * (cell["final_accuracy"] - ref["final_accuracy"])
        cell["best_accuracy_change_points"] = 100 * (cell["best_accuracy"] - ref["best_accuracy"])


def print_table(cells: list[dict[str, Any]]) -> None:
    print(
        f"{'paradigm':<12} {'codec':<13} {'MB/client/round':>15} {'vs fp32':>8} {'train vs fp32':>13} "
        f"{'final acc':>9} {'d final':>8} {'best acc':>8} {'d best':>7}"
    )
    for c in cells:
        print(
            f"{c['paradigm']:<12} {c['codec']:<13} {c['bytes_per_client_round'] / 1e6:>15.2f} "
            f"{c.get('bytes_vs_fp32', float('nan')):>8.3f} {c.get('train_bytes_vs_fp32', float('nan')):>13.3f} "
            f"{100 * c['final_accuracy']:>8.2f}% {c.get('final_accuracy_change_points', float('nan')):>+8.2f} "
            f"{100 * c['best_accuracy']:>7.2f}% {c.get('best_accuracy_change_points', float('nan')):>+7.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paradigms", nargs="+", default=["vanilla", "splitfed_v1", "ushaped"])
    parser.add_argument("--codecs", nargs="+", default=DEFAULT_CODECS)
    parser.add_argument("--samples", type=int, default=3000, help="max_train_samples (split among the clients)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-async", action="store_true", help="skip the async + int8 comparison")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    codecs = ["none"] + [c for c in args.codecs if c != "none"]
    banner(f"compression: {len(args.paradigms)} paradigms x {len(codecs)} codecs, MNIST IID, {args.clients} clients")
    cells: list[dict[str, Any]] = []
    async_cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slperf-bench-compression-") as tmp:
        work = Path(tmp)
        for paradigm in args.paradigms:
            for codec in codecs:
                config = make_config(
                    paradigm, codec, samples=args.samples, epochs=args.epochs, clients=args.clients, seed=args.seed
                )
                cells.append(run_cell(config, work))
                print(f"  {paradigm} {codec}: done", flush=True)
        if not args.no_async:
            for paradigm, codec in (("vanilla", "none"), ("async", "none"), ("async", "int8")):
                config = make_config(
                    paradigm, codec, samples=args.samples, epochs=args.epochs, clients=1, seed=args.seed
                )
                async_cells.append(run_cell(config, work))
                print(f"  {paradigm} {codec} (1 client): done", flush=True)
    with_baseline(cells)
    print_table(cells)
    if async_cells:
        ref = async_cells[0]
        for cell in async_cells:
            cell["bytes_vs_vanilla_fp32"] = cell["bytes_per_client_round"] / ref["bytes_per_client_round"]
            cell["final_accuracy_change_points"] = 100 * (cell["final_accuracy"] - ref["final_accuracy"])
            cell["best_accuracy_change_points"] = 100 * (cell["best_accuracy"] - ref["best_accuracy"])
        print("async (Chen et al.: loss-based skipping + int8), one client, against vanilla float32:")
        for c in async_cells:
            print(
                f"  {c['paradigm']:<8} {c['codec']:<6} {c['bytes_per_client_round'] / 1e6:>8.2f} MB/round "
                f"({1 / c['bytes_vs_vanilla_fp32']:.2f}x less)  final {100 * c['final_accuracy']:.2f}% "
                f"({c['final_accuracy_change_points']:+.2f})  best {100 * c['best_accuracy']:.2f}% "
                f"({c['best_accuracy_change_points']:+.2f})"
            )
    write_result(
        "bench_compression",
        {
            "setup": {
                "dataset": "mnist",
                "partition_method": "homo",
                "model": "lenet",
                "max_train_samples": args.samples,
                "epochs": args.epochs,
                "clients": args.clients,
                "seed": args.seed,
                "compress": "the same codec both ways (up and down)",
            },
            "cells": cells,
            "async": async_cells,
        },
        args.results_dir,
    )


if __name__ == "__main__":
    main()
