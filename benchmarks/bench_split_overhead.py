"""Split overhead: how much slower is one epoch of `vanilla` split learning with one client over mutual-TLS
gRPC on loopback (server and client daemon as separate processes, `slperf.federation`) than training the same
unsplit model on the same data and batches in one process?

    python -m benchmarks.bench_split_overhead [--batch-sizes 64 128] [--samples 15000] [--epochs 3]
                                              [--device cpu|cuda] [--profile DIR]

A "round" of the federation is: the bottom weights go to the client, one pass over its shard (per batch:
activations + labels up, gradient down), the bottom comes back, and an evaluation pass over the capped test
set. The in-process reference does exactly that work without the wire: one training pass over the same
batches (``ShardLoader`` with the same seed and client index) and one evaluation pass over the same test
subset, with one torch thread like each federation process. Ratio = median federation round time / median
reference epoch time (target <= 1.15). The reference runs before and after the federation and the faster of
the two medians is used, which makes the ratio conservative on a machine shared with other work; the ratio of
the fastest round to the fastest reference epoch (``ratio_of_minima``) is the least disturbed estimate.

``--device cuda`` puts the server's top, the client's bottom and the reference model on the GPU (the run's
``device`` and ``client_device``): the ratio then says what the wire costs next to GPU compute.

``--profile DIR`` attaches py-spy (if installed) to the server and the client daemon for the whole run and
writes their collapsed stacks plus a summary of where the time goes into the JSON result.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import banner, write_result

TARGET_RATIO = 1.15
LENET_CUT_FLOATS = 6 * 12 * 12  # LeNet cut after its first block: 6 x 12 x 12 activations per sample


def make_config(
    batch_size: int, samples: int, epochs: int, test_samples: int, seed: int = 0, device: str = "cpu"
) -> dict[str, Any]:
    return {
        "device": device,
        "client_device": device,
        "paradigm": "vanilla",
        "dataset": "mnist",
        "clients": 1,
        "client_ids": ["c1"],
        "model": "lenet",
        "split_layer": 1,
        "batch_size": batch_size,
        "epochs": epochs,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "seed": seed,
        "max_train_samples": samples,
        "max_test_samples": test_samples,
        "eval_batch_size": 500,
        "torch_threads": 1,
    }


def reference_epochs(raw_config: dict[str, Any]) -> list[float]:
    """Seconds per epoch (train pass + evaluation pass) of the unsplit model in this process, one thread."""
    import torch
    import torch.nn.functional as F

    from slperf.common.config_loader import config_from_mapping
    from slperf.common.devices import resolve_device
    from slperf.common.models import build_model
    from slperf.common.paradigms.kit.steps import make_optimizer
    from slperf.common.shards import build_client_data

    config, _ = config_from_mapping(raw_config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = build_client_data(config, 0)
        device = resolve_device(config.device)
        model = build_model(config.model, data.input_shape, data.num_classes, config.seed).to(device)
        optimizer = make_optimizer(model.parameters(), config)
        times = []
        for epoch in range(config.epochs):
            started = time.perf_counter()
            model.train()
            for x, y in data.train.batches(epoch):
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                logits = model(x)
                F.cross_entropy(logits, y).backward()
                optimizer.step()
                int((logits.detach().argmax(1) == y).sum())  # the accuracy the server computes per batch
            model.eval()
            with torch.no_grad():
                for x, y in data.test.batches(0, shuffle=False):
                    x, y = x.to(device), y.to(device)
                    logits = model(x)
                    float(F.cross_entropy(logits, y, reduction="sum"))
                    int((logits.argmax(1) == y).sum())
            times.append(time.perf_counter() - started)
        return times
    finally:
        torch.set_num_threads(threads)


class Profiler:
    """py-spy attached to the federation's children (raw collapsed stacks, one file per process)."""

    def __init__(self, out_dir: Path, rate: int = 100, native: bool = False):
        self.out_dir = Path(out_dir)
        self.rate = rate
        self.native = native
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.available = Path(self.exe).exists()

    def remember(self, fed) -> None:
        """FederationProbe's start hook: note the children; py-spy attaches once round 1 has finished."""
        self.federation = fed

    def on_echo(self, message: str) -> None:
        """run_federation's progress lines: profile from the end of round 1 on (steady state, no imports)."""
        if message.startswith("round 1/") and getattr(self, "federation", None) is not None and not self.procs:
            self.attach(self.federation)

    def attach(self, fed) -> None:
        if not self.available:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        targets = [("server", fed.server), *sorted(fed.clients.items())]
        for name, proc in targets:
            out = self.out_dir / f"{name}.collapsed.txt"
            cmd = [
                self.exe,
                "record",
                "--pid",
                str(proc.pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--threads",
                *(["--native"] if self.native else ["--nonblocking"]),
                "-o",
                str(out),
            ]
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append((name, spy, out))

    def finish(self) -> dict[str, Any]:
        summaries: dict[str, Any] = {}
        for name, spy, out in self.procs:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.terminate()
                spy.wait()
            if out.exists():
                summaries[name] = summarize_collapsed(out)
        return summaries


IDLE_FRAMES = ("EpollSelector.select", "_worker (thread.py)", "Thread.wait", "Condition.wait")


def summarize_collapsed(path: Path, top: int = 30) -> dict[str, Any]:
    """Inclusive and self sample shares per function from py-spy's raw (collapsed) output. Stacks that are
    imports or plots (one-off costs) are left out; ``idle`` is the share of samples whose innermost frame is
    a wait (event loop select, an executor worker waiting for work)."""
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    total = idle = skipped = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        names = [_frame_name(f) for f in frames]
        if any(n_.startswith("_find_and_load") or "write_plots" in n_ for n_ in names):
            skipped += n
            continue
        total += n
        if names[-1].startswith(IDLE_FRAMES) or any(x in names[-1] for x in IDLE_FRAMES):
            idle += n
        for name in set(names):
            inclusive[name] += n
        self_time[names[-1]] += n

    def share(counter):
        return [{"function": k, "share": round(v / total, 4)} for k, v in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "skipped_one_off_samples": skipped,
        "idle_share": round(idle / total, 4) if total else None,
        "inclusive": share(inclusive),
        "self": share(self_time),
        "file": str(path),
    }


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"; thread roots like "thread (0x..)" kept
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit("/", 1)[-1].split(":", 1)[0] if where else ""
    return f"{name} ({file})" if file else name


def federation_rounds(raw_config: dict[str, Any], work: Path, profiler: Profiler | None) -> dict[str, Any]:
    from slperf.bench.probe import FederationProbe
    from slperf.federation import run_federation
    from slperf.slserver.run_folder import RunFolder

    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(raw_config))
    with FederationProbe(on_start=profiler.remember if profiler else None) as probe:
        summary = run_federation(
            path,
            work / "runs",
            show_progress=False,
            echo=profiler.on_echo if profiler else (lambda _m: None),
            hooks=probe.hooks,
        )
    records = RunFolder(Path(summary["run_dir"])).read_metrics()
    return {
        "round_seconds": [r["round_seconds"] for r in records],
        "test_accuracy": summary["test_accuracy"],
        "train_bytes_up": summary["train_bytes_up"],
        "train_bytes_down": summary["train_bytes_down"],
        "run_dir": summary["run_dir"],
    }


def transport_floor(batch: int, cut_floats_per_sample: int, count: int = 300) -> float:
    """Median seconds of one raw gRPC + mTLS round trip of a batch's activations and labels up and its gradient
    down (no framing, no codec, no compute): the least any split step can add over this transport."""
    import asyncio

    from benchmarks.bench_stream import raw_grpc_round_trips, start_receiver, stop_receiver
    from slperf.pki import add_client, init_pki

    nbytes = batch * (4 * cut_floats_per_sample + 8)  # float32 activations + int64 labels
    with tempfile.TemporaryDirectory(prefix="slperf-floor-") as tmp:
        certs = Path(tmp) / "certs"
        init_pki(certs)
        add_client(certs, "bench")
        proc, port = start_receiver(["serve-raw-grpc", "--certs", str(certs)])
        try:
            times = asyncio.run(raw_grpc_round_trips(port, certs, nbytes, count))
        finally:
            stop_receiver(proc)
    return statistics.median(times[count // 10 :])


def run(
    batch_sizes: list[int],
    samples: int,
    epochs: int,
    test_samples: int,
    profile_dir: Path | None = None,
    native: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    banner(f"split overhead: vanilla, 1 client over mTLS gRPC vs one process (LeNet / MNIST, on {device})")
    cases = []
    for batch in batch_sizes:
        config = make_config(batch, samples, epochs, test_samples, device=device)
        before = reference_epochs(config)
        profiler = Profiler(profile_dir / f"batch{batch}", native=native) if profile_dir else None
        with tempfile.TemporaryDirectory(prefix="slperf-overhead-") as tmp:
            fed = federation_rounds(config, Path(tmp), profiler)
        after = reference_epochs(config)
        ref = min(statistics.median(before), statistics.median(after))
        split = statistics.median(fed["round_seconds"])
        batches = -(-samples // batch)
        rtt = transport_floor(batch, LENET_CUT_FLOATS)
        steady = statistics.median(fed["round_seconds"][1:]) if len(fed["round_seconds"]) > 1 else split
        case = {
            "device": device,
            "batch_size": batch,
            "train_samples": samples,
            "test_samples": test_samples,
            "epochs": epochs,
            "reference_epoch_seconds": {"before": before, "after": after, "median_used": ref},
            "federation_round_seconds": fed["round_seconds"],
            "federation_median": split,
            "ratio": split / ref,
            "ratio_after_first_round": steady / ref,
            "ratio_of_minima": min(fed["round_seconds"]) / min(before + after),
            "target_ratio": TARGET_RATIO,
            "meets_target": split / ref <= TARGET_RATIO,
            "per_batch_overhead_ms": 1000 * (split - ref) / batches,
            "raw_grpc_round_trip_ms": 1000 * rtt,
            "floor_ratio": (ref + batches * rtt) / ref,
            "train_bytes_up": fed["train_bytes_up"],
            "train_bytes_down": fed["train_bytes_down"],
        }
        if profiler is not None:
            case["profile"] = profiler.finish() if profiler.available else "py-spy not installed"
        cases.append(case)
        print(
            f"batch {batch}: one process {ref:.2f} s/epoch, split over mTLS gRPC {split:.2f} s/round "
            f"-> ratio {split / ref:.2f} (of the fastest epochs {case['ratio_of_minima']:.2f}; target <= "
            f"{TARGET_RATIO}); "
            f"{case['per_batch_overhead_ms']:.2f} ms extra per batch, of which a raw gRPC+mTLS round trip of the "
            f"same bytes is {1000 * rtt:.2f} ms (floor ratio {case['floor_ratio']:.2f})",
            flush=True,
        )
    return {"cases": cases, "target_ratio": TARGET_RATIO, "device": device}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--samples", type=int, default=15000, help="training samples (MNIST subset)")
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="attach py-spy to the daemons; collapsed stacks go here")
    parser.add_argument("--native", action="store_true", help="with --profile: include native frames (C/C++)")
    parser.add_argument("--results-dir", type=Path)
    parser.add_argument("--device", default="cpu", help="device of both parties and of the reference (cpu, cuda)")
    args = parser.parse_args(argv)
    result = run(args.batch_sizes, args.samples, args.epochs, args.test_samples, args.profile, args.native, args.device)
    write_result(
        "split_overhead" if args.device == "cpu" else f"split_overhead_{args.device.replace(':', '')}",
        result,
        args.results_dir,
    )
    return result


if __name__ == "__main__":
    main()
