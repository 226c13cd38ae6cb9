"""Executors: where a suite's cells run. The suite loop (``slperf.bench.run``) hands an executor the cells still
to run and a cell runner, and gets back one ``CellOutcome`` per cell as each finishes; it alone turns outcomes
into rows and appends them to ``results.jsonl``, so resuming, the report and the estimates work the same
whatever ran the cells.

    LocalExecutor  one cell after another in this process (``slperf bench``, the default)
    RayExecutor    each cell a Ray task with the suite's ``resources:``, on a local Ray instance or a cluster
                   (``slperf bench --executor ray [--ray-address ADDR]``); Ray is an optional extra, imported
                   only here and only when a RayExecutor is made

Either way a cell whose runner raises is a failed outcome and the others go on; under Ray so is a cell whose
worker process died (Ray does not retry it: a rerun of the suite runs failed cells again).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from slperf.bench.runners import CellRunner, Echo, default_runner
from slperf.bench.suite import Cell, Resources, SuiteError
from slperf.common.errors import RpcFailure, one_line
from slperf.federation import RestartPolicy

RAY_EXTRA = "pip install 'slperf[ray]'"
EXECUTORS = ("local", "ray")


class ExecutorError(SuiteError):
    """An executor that cannot run the suite as asked (Ray missing, a cell no node can hold): said before any
    cell runs."""


def error_text(exc: BaseException) -> str:
    """One line: gRPC errors by their status and details, others by type and message."""
    if callable(getattr(exc, "code", None)) and callable(getattr(exc, "details", None)):
        return one_line(f"{type(exc).__name__}: {RpcFailure.of(exc).line()}")
    return one_line(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class CellOutcome:
    """What running one cell gave: the runner's figures, or the one-line error that failed it."""

    cell: Cell
    measured: Mapping[str, Any] | None  # None when the cell failed
    error: str | None
    started_at: float  # time.time() when the cell started (for a lost Ray task: when it was submitted)
    seconds: float | None  # the cell's wall time where it ran; None when nobody could time it
    worker: str | None = None  # "pid N on HOST" for a cell run by a Ray worker

    @property
    def failed(self) -> bool:
        return self.measured is None


def measure(cell: Cell, runner: CellRunner, work_dir: Path) -> CellOutcome:
    """Runs one cell, timed; an exception from the runner is the cell's error (KeyboardInterrupt is not)."""
    started_at = time.time()
    t0 = time.monotonic()
    try:
        measured: Mapping[str, Any] | None = runner(cell, work_dir)
        error = None
    except Exception as exc:  # one broken cell must not lose the rest of the matrix
        measured, error = None, error_text(exc)
    return CellOutcome(cell, measured, error, started_at, time.monotonic() - t0)


class Executor(Protocol):
    name: str

    def check(self, cells: Sequence[Cell], resources: Resources) -> None:
        """Refuses (ExecutorError) a suite that cannot run as asked, before anything runs."""

    def runner(self, *, echo: Echo, show_progress: bool, restart: RestartPolicy | None) -> CellRunner:
        """The default cell runner, set up for where this executor runs cells."""

    def close(self) -> None:
        """Lets go of what check or run set up (a Ray instance); the suite loop calls it at the end."""

    def run(
        self,
        cells: Sequence[Cell],
        runner: CellRunner,
        work_dir: Path,
        resources: Resources,
        *,
        say: Echo,
        starting: Callable[[Cell], None],
    ) -> Iterator[CellOutcome]:
        """Every cell's outcome, as each finishes. ``starting(cell)`` is called when a cell is known to start
        (the local executor, just before it); ``say`` takes the executor's own messages."""


class LocalExecutor:
    """One cell after another, in this process (each cell's federation is still processes of its own)."""

    name = "local"

    def check(self, cells: Sequence[Cell], resources: Resources) -> None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if resources.cpus > cpus:
            raise ExecutorError(
                f"the suite asks for {resources.cpus:g} CPUs per cell (resources:); this machine has {cpus}"
            )
        if resources.gpus > 0:
            import torch

            gpus = torch.cuda.device_count()
            if resources.gpus > gpus:
                raise ExecutorError(
                    f"the suite asks for {resources.gpus:g} GPU(s) per cell (resources:); this machine has {gpus}"
                )

    def runner(self, *, echo: Echo, show_progress: bool, restart: RestartPolicy | None) -> CellRunner:
        return functools.partial(default_runner, echo=echo, show_progress=show_progress, restart=restart)

    def close(self) -> None:
        pass

    def run(
        self,
        cells: Sequence[Cell],
        runner: CellRunner,
        work_dir: Path,
        resources: Resources,
        *,
        say: Echo,
        starting: Callable[[Cell], None],
    ) -> Iterator[CellOutcome]:
        for cell in cells:
            starting(cell)
            yield measure(cell, runner, work_dir)


def worker_echo(message: str) -> None:
    """A Ray worker's messages go to its stdout, which Ray forwards to the driver (prefixed with the task)."""
    print(message, flush=True)


def _where() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _ray_cell(runner: CellRunner, cell: Cell, work_dir: str) -> CellOutcome:
    """The body of a cell's Ray task: the same measurement as the local executor's, in a reused worker."""
    outcome = measure(cell, runner, Path(work_dir))
    return CellOutcome(outcome.cell, outcome.measured, outcome.error, outcome.started_at, outcome.seconds, _where())


def _probe(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT with nothing listening is one error now: ray.init would go on retrying it for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto" (Ray finds this machine's cluster, or says there is none), or a ray:// client address
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with `ray start --head`"
        ) from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, an optional extra: {RAY_EXTRA}") from None
    return ray


@contextlib.contextmanager
def _keeping_sigterm() -> Iterator[None]:
    """``ray.init`` installs its core worker's own SIGTERM handler, which ends the driver at once: no cell is
    cancelled and the local instance's agents outlive it. The handler the caller had (``slperf bench``: stop as on
    Ctrl-C) is put back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


class RayExecutor:
    """Each cell a Ray task (``ray.remote``, no retries) asking for the suite's CPUs and GPUs, run in Ray's
    reused worker processes, so a worker imports torch and slperf once for all the cells it runs; outcomes
    come back as tasks finish (``ray.wait``). A worker that dies fails its cell only.

    address: a running cluster (``auto``, or ``HEAD:6379``), or None for a local Ray instance of ``num_cpus``
    CPUs (Ray's count of this machine by default), shut down when the suite ends. An already connected Ray
    (``ray.init`` by the caller) is used as it is and left running.

    The cell's ``work_dir`` is the driver's results folder, made absolute: on one machine its run folders land
    where the driver's do; on a cluster they stay on the node that ran the cell (the row says which, in
    ``worker``), and the row carries every figure, so the driver needs nothing from the node.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, cancel_grace: float = 30.0):
        self.ray = _import_ray()
        self.address = address
        self.num_cpus = num_cpus
        self.cancel_grace = cancel_grace
        self._owned = False

    def _connect(self) -> None:
        ray = self.ray
        if self.address:
            _probe(self.address)
        if ray.is_initialized():
            return
        if self.address:
            try:
                with _keeping_sigterm():
                    ray.init(address=self.address)
            except Exception as exc:  # no cluster there, or one that refuses us: say so, no traceback
                raise ExecutorError(f"cannot join the Ray cluster at {self.address}: {error_text(exc)}") from None
        else:
            # "local": a fresh instance even where RAY_ADDRESS or a `ray start` on this machine would be found
            with _keeping_sigterm():
                ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False)
        self._owned = True

    def close(self) -> None:
        """Shuts down the Ray instance this executor started (or disconnects from the cluster it joined)."""
        if self._owned and self.ray.is_initialized():
            self.ray.shutdown()
        self._owned = False

    def check(self, cells: Sequence[Cell], resources: Resources) -> None:
        """Refuses up front what Ray would otherwise queue forever (a cell that no node can hold), and CUDA
        cells given no GPU (Ray hides the GPUs from a task that asked for none)."""
        needs_cuda = sorted(
            c.key
            for c in cells
            if any(str(c.config.get(k, "cpu")).startswith("cuda") for k in ("device", "client_device"))
        )
        if needs_cuda and resources.gpus == 0:
            raise ExecutorError(
                f"{len(needs_cuda)} cell(s) compute on CUDA (e.g. {needs_cuda[0]}) but the suite asks for no GPU; "
                "a Ray task that asks for none sees none: add `resources: {gpus: 1}` (or a fraction) to the suite"
            )
        self._connect()
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if not any(n.get("CPU", 0) >= resources.cpus and n.get("GPU", 0) >= resources.gpus for n in nodes):
            largest = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no live nodes"
            raise ExecutorError(
                f"every cell asks for {resources.line()} (the suite's resources:), but no node of the Ray cluster "
                f"has that much (nodes: {largest}); Ray would queue the cells forever"
            )

    def runner(self, *, echo: Echo, show_progress: bool, restart: RestartPolicy | None) -> CellRunner:
        # In a worker: no bars (many cells share the driver's terminal), messages forwarded by Ray.
        return functools.partial(default_runner, echo=worker_echo, show_progress=False, restart=restart)

    def _cluster_line(self) -> str:
        total = self.ray.cluster_resources()
        return f"{total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs on {len(self.ray.nodes())} node(s)"

    def run(
        self,
        cells: Sequence[Cell],
        runner: CellRunner,
        work_dir: Path,
        resources: Resources,
        *,
        say: Echo,
        starting: Callable[[Cell], None],
    ) -> Iterator[CellOutcome]:
        ray = self.ray
        self._connect()
        task = ray.remote(max_retries=0)(_ray_cell)
        runner_ref = ray.put(runner)
        folder = str(Path(work_dir).resolve())
        pending: dict[Any, tuple[Cell, float]] = {}
        try:
            for cell in cells:
                ref = task.options(name=cell.key, num_cpus=resources.cpus, num_gpus=resources.gpus).remote(
                    runner_ref, cell, folder
                )
                pending[ref] = (cell, time.time())
            say(f"ray: {len(cells)} cell task(s) submitted, each asking {resources.line()}")
            say(f"ray: cluster of {self._cluster_line()}")
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell, submitted = pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker died, or Ray could not run or return it
                        yield CellOutcome(cell, None, _ray_error(exc), submitted, None)
        finally:
            self._cancel(list(pending))

    def _cancel(self, refs: list[Any]) -> None:
        """Cancels cells still queued or running (KeyboardInterrupt in the task, so a federation stops its
        processes) and waits a bounded time for them to end. Ray raises it when the task next runs Python code:
        one inside a long C call is not interrupted (ray-project/ray#32954) and goes when Ray shuts down."""
        if not refs:
            return
        for ref in refs:
            try:
                self.ray.cancel(ref)
            except Exception:  # already finished, or Ray is gone: nothing to cancel
                pass
        try:
            self.ray.wait(refs, num_returns=len(refs), timeout=self.cancel_grace)
        except Exception:
            pass


def _ray_error(exc: BaseException) -> str:
    """A Ray failure in one line: the cause's own message for a task error, else Ray's (a dead worker)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return error_text(cause)
    text = str(exc).strip().splitlines()
    return one_line(f"{type(exc).__name__}: {text[0] if text else ''}")


def make_executor(name: str, *, ray_address: str | None = None) -> Executor:
    """The executor the CLI names; ``ray_address`` only with ``ray``."""
    if name == "local":
        if ray_address:
            raise ExecutorError("--ray-address is for --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(ray_address)
    raise ExecutorError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
