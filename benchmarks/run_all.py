"""Runs every performance benchmark in turn and writes one JSON per benchmark to benchmarks/results/:

    python -m benchmarks.run_all [--quick] [--only split_overhead stream scaling codec startup]

1. split overhead (``bench_split_overhead``): vanilla with 1 client over mTLS gRPC vs one process;
2. codec (``bench_codec``, when that script exists: it belongs to the wire codec's author);
3. stream throughput (``bench_stream``): framing over grpc.aio + TLS vs a plain TCP socket;
4. scaling (``bench_scaling``): splitfed_v1 (and psl) with 1..32 client daemons;
5. start-up (``bench_startup``): a client daemon from process start to connected, ready and its first step.

``--quick`` shrinks every benchmark (fewer samples, sizes and client counts) for a smoke run. Nothing here
passes or fails: a benchmark that raises is reported and the others still run; the exit code is 0 unless
one of them crashed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks._common import RESULTS_DIR

HERE = Path(__file__).resolve().parent


def _split_overhead(quick: bool, results: Path) -> None:
    from benchmarks import bench_split_overhead

    args = ["--samples", "3000", "--epochs", "2"] if quick else []
    bench_split_overhead.main([*args, "--results-dir", str(results)])


def _codec(quick: bool, results: Path) -> None:
    script = HERE / "bench_codec.py"
    if not script.exists():
        print("codec: benchmarks/bench_codec.py is not there (written by the codec's author); skipped")
        return
    args = ["--seconds", "0.05", "--repeats", "2"] if quick else []
    subprocess.run(
        [sys.executable, str(script), *args, "--out", str(results / "codec.json")], check=True, cwd=str(HERE.parent)
    )


def _stream(quick: bool, results: Path) -> None:
    from benchmarks import bench_stream

    args = ["--sizes-mib", "1", "4", "--repeats", "2"] if quick else []
    bench_stream.main([*args, "--results-dir", str(results)])


def _scaling(quick: bool, results: Path) -> None:
    from benchmarks import bench_scaling

    args = ["--clients", "1", "2", "4", "--epochs", "1", "--per-client", "128"] if quick else []
    bench_scaling.main([*args, "--results-dir", str(results)])


def _startup(quick: bool, results: Path) -> None:
    from benchmarks import bench_startup

    args = ["--repeats", "2"] if quick else []
    bench_startup.main([*args, "--results-dir", str(results)])


BENCHMARKS = {
    "split_overhead": _split_overhead,
    "codec": _codec,
    "stream": _stream,
    "scaling": _scaling,
    "startup": _startup,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run just these")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    crashed = []
    for name, fn in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        started = time.monotonic()
        print(f"\n### {name}", flush=True)
        try:
            fn(args.quick, args.results_dir)
        except Exception:
            traceback.print_exc()
            crashed.append(name)
        print(f"### {name}: {time.monotonic() - started:.0f} s", flush=True)
    if crashed:
        print(f"benchmarks that crashed: {', '.join(crashed)}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
