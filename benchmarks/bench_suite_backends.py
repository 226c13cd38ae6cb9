"""A suite's wall time per backend and executor, measured in one sitting, and the paper suite's estimate checked.

    python -m benchmarks.bench_suite_backends [--suite quick] [--variants federation sim sim-ray]
                                              [--paper-slice 4] [--out DIR]

For each variant the suite runs into a fresh folder (``federation``: every cell a local federation of processes
over mutual TLS; ``sim``: every cell simulated in this process; ``sim-ray``: sim cells as tasks of a local Ray
instance; ``federation-ray`` also exists). It prints the wall time, the summed training time of the cells
(``train_seconds``, the rounds' own time) and their ratio, which is the overhead a backend adds to training. Cells
of the same key are compared across variants: the paradigms whose schedule does not depend on arrival order must
give the same accuracy and bytes under every backend (docs/simulation.md).

Then the paper suite is estimated per variant by the bench's own ``Estimator`` calibrated with that variant's rows,
and ``--paper-slice N`` runs N of its cheapest cells (Adult) under each variant and compares the measured time of
the slice with what the estimator said before it ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks._common import banner, write_result
from slperf.bench.estimate import Estimator
from slperf.bench.executors import make_executor
from slperf.bench.run import run_suite
from slperf.bench.store import ResultsStore
from slperf.bench.suite import CENTRALIZED, Cell, Suite, expand, load_suite

# Paradigms whose server serves batches in arrival order (docs/simulation.md): their accuracy may differ between
# backends (and between runs of one backend); their bytes are fixed by the schedule up to varint-coded counts.
ARRIVAL_ORDER = {"psl", "splitfed_v2", "ushaped_parallel"}
VARIANTS = {
    "federation": ("federation", "local"),
    "sim": ("sim", "local"),
    "sim-ray": ("sim", "ray"),
    "federation-ray": ("federation", "ray"),
}


def _with_backend(suite: Suite, backend: str) -> Suite:
    return dataclasses.replace(suite, base={**suite.base, "backend": backend})


def _run(suite: Suite, variant: str, out: Path, only: Any = None) -> tuple[float, dict[str, dict[str, Any]]]:
    """Runs the suite (or the cells ``only`` accepts) as ``variant`` into ``out``; (wall seconds, ok rows). A folder
    this has finished before (its ``wall.json``) is read instead of run again (``--reuse``)."""
    done = out / "wall.json"
    if done.exists():
        return float(json.loads(done.read_text())["wall_seconds"]), _ok_rows(out)
    backend, executor = VARIANTS[variant]
    started = time.monotonic()
    run_suite(
        suite,
        out,
        show_progress=False,
        echo=lambda _m: None,
        plots=False,
        only=only,
        backend=backend,
        executor=make_executor(executor),
    )
    wall = time.monotonic() - started
    done.write_text(json.dumps({"wall_seconds": wall}))
    return wall, _ok_rows(out)


def _ok_rows(out: Path) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in ResultsStore(out).load().items() if r.get("status") == "ok"}


def _paper_slice(paper: Suite, n: int) -> list[Cell]:
    cells = [c for c in expand(paper) if c.dataset == "adult" and c.paradigm != CENTRALIZED]
    cells = [c for c in cells if c.partition is not None and c.partition.method == "homo"]
    cells = [c for c in cells if c.clients == 3 and c.seed == 0]
    return cells[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--variants", nargs="+", default=["federation", "sim", "sim-ray"], choices=sorted(VARIANTS))
    parser.add_argument("--paper-slice", type=int, default=4, help="paper cells to run per variant (0: none)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-backends"))
    parser.add_argument("--reuse", help="a sitting's folder under --out (its stamp): variants it finished are read")
    args = parser.parse_args()
    stamp = args.reuse or time.strftime("%Y%m%d-%H%M%S")
    suite = load_suite(args.suite)
    paper = load_suite("paper")
    figures: dict[str, Any] = {"suite": suite.name, "variants": {}}
    rows_by_variant: dict[str, dict[str, dict[str, Any]]] = {}

    for variant in args.variants:
        banner(f"{suite.name} suite, {variant}")
        wall, rows = _run(suite, variant, args.out / stamp / f"{suite.name}-{variant}")
        rows_by_variant[variant] = rows
        train = sum(float(r.get("train_seconds") or 0.0) for r in rows.values())
        ratio = wall / train if train else None
        print(f"{len(rows)} cells ok, wall {wall:.1f} s, summed training {train:.1f} s, ratio {ratio:.2f}x")

        estimator = Estimator.for_suite(paper)
        for row in rows.values():
            estimator.observe(row)
        paper_cells = expand(_with_backend(paper, VARIANTS[variant][0]))
        # Cells at once: one under the local executor; under Ray as many as this machine's CPUs hold (the rates
        # above were measured with that many cells sharing the machine, so they already include the contention).
        at_once = max(1, (os.cpu_count() or 1) // paper.resources.cpus) if VARIANTS[variant][1] == "ray" else 1
        paper_hours = sum(estimator.estimate(c)[0] for c in paper_cells) / 3600 / at_once
        no_cifar = sum(estimator.estimate(c)[0] for c in paper_cells if c.dataset != "cifar10") / 3600 / at_once
        print(
            f"paper suite estimate ({len(paper_cells)} cells, {at_once} at once): {paper_hours:.1f} h "
            f"({no_cifar:.1f} h without CIFAR-10)"
        )
        entry: dict[str, Any] = {
            "cells_ok": len(rows),
            "wall_seconds": wall,
            "train_seconds": train,
            "wall_over_train": ratio,
            "paper_estimate_hours": paper_hours,
            "paper_estimate_hours_without_cifar10": no_cifar,
        }
        if args.paper_slice:
            chosen = {c.key for c in _paper_slice(paper, args.paper_slice)}
            sliced = [c for c in paper_cells if c.key in chosen]
            expected = sum(estimator.estimate(c)[0] for c in sliced)
            slice_wall, slice_rows = _run(
                paper,
                variant,
                args.out / stamp / f"paper-slice-{variant}",
                only=lambda c, keys=frozenset(chosen): c.key in keys,
            )
            measured = sum(float(r.get("total_seconds") or 0.0) for r in slice_rows.values())
            if not sliced or len(slice_rows) < len(sliced):
                print(f"paper slice: {len(slice_rows)} of {len(sliced)} cells finished; no comparison")
            else:
                print(
                    f"paper slice ({len(sliced)} cells: {', '.join(sorted(c.paradigm for c in sliced))}): "
                    f"estimated {expected:.0f} s, measured {measured:.0f} s of cell time "
                    f"({slice_wall:.0f} s wall), measured/estimated {measured / expected:.2f}"
                )
                entry.update(
                    paper_slice_cells=sorted(chosen),
                    paper_slice_estimated_seconds=expected,
                    paper_slice_measured_seconds=measured,
                    paper_slice_wall_seconds=slice_wall,
                )
        figures["variants"][variant] = entry

    # The same cell under every variant: equal accuracy and bytes where the schedule is deterministic.
    if len(rows_by_variant) > 1:
        first, *others = rows_by_variant
        same, differ = [], []
        for key, row in sorted(rows_by_variant[first].items()):
            if row["paradigm"] == CENTRALIZED:
                continue
            twins = [rows_by_variant[v].get(key) for v in others]
            if any(t is None for t in twins):
                continue
            equal = all(
                t is not None
                and t["final_accuracy"] == row["final_accuracy"]
                and t["bytes_up"] == row["bytes_up"]
                and t["bytes_down"] == row["bytes_down"]
                for t in twins
            )
            (same if equal else differ).append((key, row["paradigm"]))
        unexpected = [k for k, p in differ if p not in ARRIVAL_ORDER]
        print(
            f"cells equal in accuracy and bytes across {', '.join(rows_by_variant)}: {len(same)}; "
            f"different: {len(differ)} ({', '.join(sorted({p for _, p in differ})) or 'none'}); "
            f"different and not arrival-order: {unexpected or 'none'}"
        )
        figures.update(
            equal_cells=[k for k, _ in same], different_cells=[k for k, _ in differ], unexpected_differences=unexpected
        )
    write_result("bench_suite_backends", figures)


if __name__ == "__main__":
    main()
