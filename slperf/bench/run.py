"""The suite loop: runs every cell of a suite that has not finished yet, one after another, appending each
row to the results store as it finishes and rewriting the report after every cell, so an interrupted suite
loses only the cell in flight and a re-run into the same folder resumes.

Re-running the same suite into the same folder skips every cell that finished with the same resolved config
(its stable key and a hash of its config); failed cells and cells whose config changed are run again.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slperf.bench import report
from slperf.bench.estimate import Estimator
from slperf.bench.rows import failed_row, finalize_row
from slperf.bench.runners import CellRunner, Echo, default_runner
from slperf.bench.store import ResultsStore
from slperf.bench.suite import Cell, Suite, expand, load_suite, preflight
from slperf.common.errors import RpcFailure, one_line
from slperf.federation import RestartPolicy

Row = dict[str, Any]


@dataclass
class SuiteOutcome:
    suite: Suite
    out_dir: Path
    rows: list[dict[str, Any]]  # the latest row of every cell of the matrix that has one, in matrix order
    ran: list[str]  # keys run this time
    skipped: list[str]  # keys already finished (same config) and not run again
    failed: list[str]  # keys that failed this time
    report: Path | None = None
    plots: list[Path] = field(default_factory=list)


def _error_text(exc: BaseException) -> str:
    """One line: gRPC errors by their status and details, others by type and message."""
    if callable(getattr(exc, "code", None)) and callable(getattr(exc, "details", None)):
        return one_line(f"{type(exc).__name__}: {RpcFailure.of(exc).line()}")
    return one_line(f"{type(exc).__name__}: {exc}")


def _fmt_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class _Console:
    """Where the suite's messages go (the caller's echo, above the matrix progress bar, or stdout), and the
    bar itself: one cell per step, already finished cells counted at once."""

    def __init__(self, suite: Suite, total: int, *, show_progress: bool, echo: Echo | None):
        self.echo = echo
        self.bar = None
        if show_progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"suite {suite.name}", unit="cell", file=sys.stderr, position=0)

    def say(self, message: str) -> None:
        if self.echo is not None:
            self.echo(message)
        elif self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, flush=True)

    def advance(self, cells: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(cells)

    def running(self, key: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(key)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _SuiteRun:
    """The state of one run_suite call: the matrix, what the store already holds, and the running estimate."""

    suite: Suite
    cells: list[Cell]
    out: Path
    console: _Console
    store: ResultsStore
    previous: dict[str, Row] = field(init=False)
    estimator: Estimator = field(init=False)

    def __post_init__(self) -> None:
        self.previous = self.store.load()
        self.estimator = Estimator.for_suite(self.suite)
        for row in self.previous.values():
            self.estimator.observe(row)

    def is_done(self, cell: Cell) -> bool:
        """Finished before with the same resolved config: not run again."""
        row = self.previous.get(cell.key)
        return bool(row and row.get("status") == "ok" and row.get("config_hash") == cell.config_hash)

    def plan(self, only: Callable[[Cell], bool] | None) -> tuple[list[Cell], list[str]]:
        """The cells to run now and the keys skipped as done; says so, with the preflight notes and the
        expected total time."""
        todo = [c for c in self.cells if not self.is_done(c) and (only is None or only(c))]
        skipped = [c.key for c in self.cells if self.is_done(c)]
        self.console.advance(len(skipped))
        say = self.console.say
        if skipped:
            say(f"{len(skipped)} of {len(self.cells)} cells already finished in {self.out}; skipping them")
        for note in preflight(todo):
            say(f"note: {note}")
        remaining = sum(self.estimator.estimate(c)[0] for c in todo)
        say(f"suite {self.suite.name}: {len(todo)} cell(s) to run, expected ≈ {_fmt_seconds(remaining)} in total")
        return todo, skipped

    def run_cell(self, cell: Cell, runner: CellRunner, expected: float) -> tuple[Row, bool]:
        """One cell measured and turned into a row, and whether it failed: a runner that raises gives a failed
        row (the matrix goes on); KeyboardInterrupt stops the suite with every finished cell kept."""
        target = self.suite.target_for(cell.dataset)
        started_at = time.time()
        t0 = time.monotonic()
        failed = False
        try:
            row = finalize_row(cell, runner(cell, self.out), target=target)
        except KeyboardInterrupt:
            self.console.say(f"interrupted during {cell.key}; finished cells are kept in {self.store.path}")
            raise
        except Exception as exc:  # one broken cell must not lose the rest of the matrix
            row = failed_row(cell, _error_text(exc), target=target)
            failed = True
            self.console.say(f"    FAILED {cell.key}: {row['error']}")
        elapsed = time.monotonic() - t0
        row.setdefault("total_seconds", elapsed)
        row["expected_seconds"] = expected
        row["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started_at))
        if row["status"] == "ok":
            acc = row.get("final_accuracy")
            self.console.say(
                f"    done in {_fmt_seconds(elapsed)}: final accuracy {'n/a' if acc is None else f'{100 * acc:.2f}%'}"
            )
        return row, failed

    def record(self, row: Row) -> None:
        """Keeps a finished row (store, resume state, estimates) and rewrites the tables with it."""
        self.store.append(row)
        self.previous[row["key"]] = row
        self.estimator.observe(row)
        report.write_tables(self.rows(), self.out, suite=self.suite, cells=self.cells)

    def rows(self) -> list[Row]:
        """The latest row of every cell that has one, in matrix order."""
        return [self.previous[c.key] for c in self.cells if c.key in self.previous]

    def write_report(self, plots: bool) -> tuple[Path, list[Path]]:
        rows = self.rows()
        path = report.write_tables(rows, self.out, suite=self.suite, cells=self.cells)
        plot_paths = report.write_plots(rows, self.out / "plots") if plots else []
        if plot_paths:
            path = report.write_tables(rows, self.out, suite=self.suite, cells=self.cells, plots=plot_paths)
        return path, plot_paths


def run_suite(
    suite: str | Path | Suite,
    out_dir: str | Path | None = None,
    *,
    runner: CellRunner | None = None,
    show_progress: bool = True,
    echo: Echo | None = None,
    plots: bool = True,
    only: Callable[[Cell], bool] | None = None,
    restart: RestartPolicy | None = None,
    backend: str | None = None,
) -> SuiteOutcome:
    """Runs every cell of a suite that has not finished yet, then writes results.csv, report.md and plots.

    suite: a Suite, a YAML file, or the NAME of a built-in suite (quick, paper). out_dir: the results folder
    (default ``runs/bench/<suite name>``); re-running into it resumes. runner(cell, work_dir) -> measured
    figures (default: a real federation, or the centralized baseline in its own process); a runner that raises
    marks the cell failed and the suite goes on (KeyboardInterrupt stops it, keeping what finished). only: run
    just the cells it accepts (the report still covers every finished cell). restart: what the default runner's
    federations do about a client daemon that exits (default ``RestartPolicy()``; not for a given runner).
    backend: ``federation`` or ``sim`` for every cell, over the suite's ``base`` (default: what the suite says).
    """
    if runner is not None and restart is not None:
        raise ValueError("restart is for the default runner; a given runner starts its own processes")
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    if backend is not None:  # over the suite's base: part of every cell's config (and of its config hash)
        suite = dataclasses.replace(suite, base={**suite.base, "backend": backend})
    cells = expand(suite)  # a broken suite fails here, before any folder is made
    out = Path(out_dir) if out_dir is not None else Path("runs") / "bench" / suite.name
    out.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(out)
    console = _Console(suite, len(cells), show_progress=show_progress, echo=echo)
    state = _SuiteRun(suite, cells, out, console, store)
    if runner is None:
        runner = functools.partial(default_runner, echo=console.say, show_progress=show_progress, restart=restart)

    todo, skipped = state.plan(only)
    ran: list[str] = []
    failed: list[str] = []
    for n, cell in enumerate(todo, 1):
        expected, basis = state.estimator.estimate(cell)
        remaining = sum(state.estimator.estimate(c)[0] for c in todo[n - 1 :])
        console.say(
            f"[{n}/{len(todo)}] {cell.key}: expected ≈ {_fmt_seconds(expected)} ({basis}); "
            f"≈ {_fmt_seconds(remaining)} left for the matrix"
        )
        console.running(cell.key)
        row, cell_failed = state.run_cell(cell, runner, expected)
        ran.append(cell.key)
        if cell_failed:
            failed.append(cell.key)
        console.advance()
        state.record(row)
    console.close()

    report_path, plot_paths = state.write_report(plots)
    console.say(
        f"results: {out / 'results.csv'}, report: {report_path}" + (f", {len(plot_paths)} plots" if plot_paths else "")
    )
    return SuiteOutcome(
        suite=suite,
        out_dir=out,
        rows=state.rows(),
        ran=ran,
        skipped=skipped,
        failed=failed,
        report=report_path,
        plots=plot_paths,
    )
