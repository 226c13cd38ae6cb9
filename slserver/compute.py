"""The server's execution context for a paradigm: what ``ServerContext`` promises, made concrete.

A server paradigm runs its model compute through ``compute`` so that the event loop, which also serves
every client's session stream, keepalives and control calls, is never blocked by a training step. The
server hands every run the same single-thread executor, so a paradigm's computations run one at a time
and in the order it asked for them.

Every computation runs under the run's precision (``amp:``; autocast is thread-local, so it is entered on the
compute thread itself). Building the context resolves the run's ``device`` on this machine: a device it lacks
is a ConfigError naming the fix, before any model is built.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from slperf.common.config import RunConfig
from slperf.common.devices import Placement, party_placement
from slperf.common.paradigms.base import FedServerLink

T = TypeVar("T")
# Told of every computation when it is done: the function's name and its seconds on the compute thread.
StepObserver = Callable[[str, float], None]


@dataclass
class ComputeContext:
    """What a server paradigm gets: the run's config and a way to compute off the event loop."""

    config: RunConfig
    run_id: str
    executor: concurrent.futures.Executor
    observe: StepObserver | None = None
    placement: Placement = field(init=False)
    # Seconds the compute thread spent in this run's computations: the server's busy time (its share of the wall
    # time shows whether the server or the links set the pace). Written on the compute thread only.
    busy_seconds: float = field(init=False, default=0.0)
    fed_server: FedServerLink | None = None  # the run's fed server (``fed_server:``), set by the coordinator

    def __post_init__(self) -> None:
        self.placement = party_placement(self.config, where="the server")

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(self._under_amp, fn, *args))

    def _under_amp(self, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            with self.placement.autocast():
                return fn(*args)
        finally:
            took = time.perf_counter() - started
            self.busy_seconds += took
            if self.observe is not None:
                self.observe(step_name(fn), took)


def step_name(fn: Callable[..., Any]) -> str:
    """What a computation is called in the metrics: its function's qualified name (``top_train_step``,
    ``SGD.step``), through ``functools.partial``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)
