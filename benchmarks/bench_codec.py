"""Throughput of the tensor wire codec against torch.save/torch.load and pickle, for typical activation sizes.

    python benchmarks/bench_codec.py [--out benchmarks/results/codec.json] [--seconds 0.2] [--repeats 5]

Every method is timed end to end, tensor -> wire bytes -> tensor:

* ``codec``          encode_tensor(t).SerializeToString() / decode_tensor(Tensor.FromString(b)) (writable)
* ``codec-readonly`` the same, decoded with writable=False (zero-copy over the field's bytes)
* ``codec-message``  encode_tensor / decode_tensor alone, without protobuf (de)serialisation
* ``torch.save``     torch.save into BytesIO / torch.load(weights_only=True)
* ``pickle``         pickle.dumps(protocol=5) / pickle.loads
* ``numpy-copy``     the memcpy bound: ndarray.tobytes / np.frombuffer(...).copy()

Throughput is tensor bytes / time per operation (GB/s = 1e9 B/s), best of ``--repeats`` runs of ``--seconds``
each (median also recorded). Python allocations per decode come from tracemalloc: blocks and bytes still held
per decoded tensor (the result itself), and the peak of traced memory during one decode. Numpy registers its
data buffers with tracemalloc; torch's own allocator does not, so torch-allocated storage is not counted.

On glibc, MiB-sized buffers are dominated by page faults of fresh mmap'd memory; compare with
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import pickle
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slperf.common.wire.codec import decode_tensor, encode_tensor
from slperf.v1 import tensor_pb2

SHAPES = [(64, 6, 12, 12), (128, 6, 12, 12), (128, 16, 32, 32)]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "codec.json"


def _torch_save(t: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(t, buf)
    return buf.getvalue()


def _torch_load(b: bytes) -> torch.Tensor:
    return torch.load(io.BytesIO(b), weights_only=True)


def methods(shape: tuple[int, ...]) -> dict[str, tuple[Callable[[torch.Tensor], Any], Callable[[Any], torch.Tensor]]]:
    return {
        "codec": (
            lambda t: encode_tensor(t).SerializeToString(),
            lambda b: decode_tensor(tensor_pb2.Tensor.FromString(b)),
        ),
        "codec-readonly": (
            lambda t: encode_tensor(t).SerializeToString(),
            lambda b: decode_tensor(tensor_pb2.Tensor.FromString(b), writable=False),
        ),
        "codec-message": (encode_tensor, decode_tensor),
        "torch.save": (_torch_save, _torch_load),
        "pickle": (lambda t: pickle.dumps(t, protocol=5), pickle.loads),
        "numpy-copy": (
            lambda t: t.numpy().tobytes(),
            lambda b: torch.from_numpy(np.frombuffer(b, dtype=np.float32).copy()).view(shape),
        ),
    }


def _time(fn: Callable[[], Any], seconds: float, repeats: int) -> tuple[float, float]:
    """(best, median) seconds per call."""
    fn()
    n, start = 1, time.perf_counter()
    while time.perf_counter() - start < seconds / 10:  # calibrate the loop length
        fn()
        n += 1
    per = (time.perf_counter() - start) / n
    loops = max(1, int(seconds / max(per, 1e-9)))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        runs.append((time.perf_counter() - t0) / loops)
    return min(runs), statistics.median(runs)


def _allocations(decode: Callable[[Any], torch.Tensor], wire: Any, k: int = 20) -> dict[str, float]:
    decode(wire)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [decode(wire) for _ in range(k)]
        after = tracemalloc.take_snapshot()
        stats = after.compare_to(before, "lineno")
        blocks = sum(s.count_diff for s in stats) / k
        held = sum(s.size_diff for s in stats) / k
        del kept
        gc.collect()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = decode(wire)
        peak = tracemalloc.get_traced_memory()[1] - base
        del out
    finally:
        tracemalloc.stop()
    return {"alloc_blocks_per_decode": blocks, "alloc_bytes_per_decode": held, "peak_traced_bytes_per_decode": peak}


def run(seconds: float, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for shape in SHAPES:
        t = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        nbytes = t.numel() * t.element_size()
        for name, (encode, decode) in methods(shape).items():
            wire = encode(t)
            assert torch.equal(decode(wire), t), name
            enc_best, enc_med = _time(lambda encode=encode, t=t: encode(t), seconds, repeats)
            dec_best, dec_med = _time(lambda decode=decode, wire=wire: decode(wire), seconds, repeats)
            wire_bytes = len(wire) if isinstance(wire, (bytes, bytearray)) else wire.ByteSize()
            rows.append(
                {
                    "shape": list(shape),
                    "dtype": "float32",
                    "tensor_bytes": nbytes,
                    "method": name,
                    "wire_bytes": wire_bytes,
                    "encode_us": enc_best * 1e6,
                    "decode_us": dec_best * 1e6,
                    "encode_gbps": nbytes / enc_best / 1e9,
                    "decode_gbps": nbytes / dec_best / 1e9,
                    "encode_gbps_median": nbytes / enc_med / 1e9,
                    "decode_gbps_median": nbytes / dec_med / 1e9,
                    **_allocations(decode, wire),
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'shape':<16} {'MB':>6} {'method':<15} {'wire B':>10} {'enc GB/s':>9} {'dec GB/s':>9} "
        f"{'enc us':>9} {'dec us':>9} {'blocks':>7} {'held B':>9} {'peak B':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{'x'.join(map(str, r['shape'])):<16} {r['tensor_bytes'] / 1e6:>6.2f} {r['method']:<15} "
            f"{r['wire_bytes']:>10} {r['encode_gbps']:>9.2f} {r['decode_gbps']:>9.2f} {r['encode_us']:>9.1f} "
            f"{r['decode_us']:>9.1f} {r['alloc_blocks_per_decode']:>7.1f} {r['alloc_bytes_per_decode']:>9.0f} "
            f"{r['peak_traced_bytes_per_decode']:>9.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=0.2, help="time per measured run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    rows = run(args.seconds, args.repeats)
    print(table(rows))
    meta = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "protobuf": __import__("google.protobuf").protobuf.__version__,
        "protobuf_backend": __import__("google.protobuf.internal.api_implementation", fromlist=["Type"]).Type(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "seconds": args.seconds,
        "repeats": args.repeats,
        "gb": "1e9 bytes of tensor data per second",
        # glibc malloc tuning changes these figures a lot for MiB-sized buffers (mmap/trim page-fault churn)
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
