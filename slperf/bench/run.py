"""The suite loop: runs every cell of a suite that has not finished yet through an executor (one after another
here, or as Ray tasks: ``slperf.bench.executors``), appending each row to the results store as its cell
finishes and rewriting the report after every cell, so an interrupted suite loses only the cells in flight and
a re-run into the same folder resumes.

Re-running the same suite into the same folder skips every cell that finished with the same resolved config
(its stable key and a hash of its config); failed cells and cells whose config changed are run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slperf.bench import report
from slperf.bench.estimate import Estimator
from slperf.bench.executors import CellOutcome, Executor, LocalExecutor
from slperf.bench.rows import failed_row, finalize_row
from slperf.bench.runners import CellRunner, Echo
from slperf.bench.store import ResultsStore
from slperf.bench.suite import Cell, Suite, expand, load_suite, preflight
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
    concurrent: bool = False  # cells finish in any order: messages name their cell
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

    def row_of(self, outcome: CellOutcome, expected: float) -> Row:
        """A finished cell's row (a failed one when its runner raised or its worker died), said on the console."""
        cell = outcome.cell
        target = self.suite.target_for(cell.dataset)
        if outcome.measured is None:
            row = failed_row(cell, outcome.error or "failed", target=target)
            self.console.say(f"    FAILED {cell.key}: {row['error']}")
        else:
            row = finalize_row(cell, outcome.measured, target=target)
        if outcome.seconds is not None:
            row.setdefault("total_seconds", outcome.seconds)
        row["expected_seconds"] = expected
        row["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(outcome.started_at))
        if outcome.worker is not None:
            row["worker"] = outcome.worker
        if row["status"] == "ok":
            acc = row.get("final_accuracy")
            seconds = row.get("total_seconds")
            took = "" if seconds is None else f" in {_fmt_seconds(float(seconds))}"
            which = f" {cell.key}" if self.concurrent else ""
            self.console.say(f"    done{which}{took}: final accuracy {'n/a' if acc is None else f'{100 * acc:.2f}%'}")
        return row

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
    executor: Executor | None = None,
) -> SuiteOutcome:
    """Runs every cell of a suite that has not finished yet, then writes results.csv, report.md and plots.

    suite: a Suite, a YAML file, or the NAME of a built-in suite (``slperf/bench/suites``). out_dir: the results folder
    (default ``runs/bench/<suite name>``); re-running into it resumes. runner(cell, work_dir) -> measured
    figures (default: a real federation, or the centralized baseline in its own process); a runner that raises
    marks the cell failed and the suite goes on (KeyboardInterrupt stops it, keeping what finished). only: run
    just the cells it accepts (the report still covers every finished cell). restart: what the default runner's
    federations do about a client daemon that exits (default ``RestartPolicy()``; not for a given runner).
    backend: ``federation`` or ``sim`` for every cell, over the suite's ``base`` (default: what the suite says).
    executor: where cells run (default ``LocalExecutor()``: one after another here; a ``RayExecutor`` runs
    them as Ray tasks, and a given runner must then be picklable); it is closed at the end.
    """
    if runner is not None and restart is not None:
        raise ValueError("restart is for the default runner; a given runner starts its own processes")
    executor = executor or LocalExecutor()
    try:
        return _run_suite(suite, out_dir, runner, show_progress, echo, plots, only, restart, backend, executor)
    finally:
        executor.close()


def _run_suite(
    suite: str | Path | Suite,
    out_dir: str | Path | None,
    runner: CellRunner | None,
    show_progress: bool,
    echo: Echo | None,
    plots: bool,
    only: Callable[[Cell], bool] | None,
    restart: RestartPolicy | None,
    backend: str | None,
    executor: Executor,
) -> SuiteOutcome:
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    if backend is not None:  # over the suite's base: part of every cell's config (and of its config hash)
        suite = dataclasses.replace(suite, base={**suite.base, "backend": backend})
    cells = expand(suite)  # a broken suite fails here, before any folder is made
    out = Path(out_dir) if out_dir is not None else Path("runs") / "bench" / suite.name
    out.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(out)
    console = _Console(suite, len(cells), show_progress=show_progress, echo=echo)
    state = _SuiteRun(suite, cells, out, console, store, concurrent=not isinstance(executor, LocalExecutor))
    if runner is None:
        runner = executor.runner(echo=console.say, show_progress=show_progress, restart=restart)

    todo, skipped = state.plan(only)
    ran: list[str] = []
    failed: list[str] = []
    if todo:
        executor.check(todo, suite.resources)
    # Each cell's expected time as it starts (the local executor), or as it is submitted (Ray).
    expected = {c.key: state.estimator.estimate(c)[0] for c in todo}
    started: list[Cell] = []

    def starting(cell: Cell) -> None:
        estimate, basis = state.estimator.estimate(cell)
        expected[cell.key] = estimate
        started.append(cell)
        n = len(started)
        remaining = sum(state.estimator.estimate(c)[0] for c in todo[n - 1 :])
        console.say(
            f"[{n}/{len(todo)}] {cell.key}: expected ≈ {_fmt_seconds(estimate)} ({basis}); "
            f"≈ {_fmt_seconds(remaining)} left for the matrix"
        )
        console.running(cell.key)

    outcomes = executor.run(todo, runner, out, suite.resources, say=console.say, starting=starting)
    try:
        with contextlib.closing(outcomes):
            for outcome in outcomes:
                row = state.row_of(outcome, expected[outcome.cell.key])
                ran.append(outcome.cell.key)
                if outcome.failed:
                    failed.append(outcome.cell.key)
                console.advance()
                state.record(row)
    except KeyboardInterrupt:
        in_flight = [c.key for c in todo if c.key not in ran and (state.concurrent or c in started)]
        console.say(
            f"interrupted during {', '.join(in_flight) or 'the suite'}; finished cells are kept in {store.path}"
        )
        raise
    finally:
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
