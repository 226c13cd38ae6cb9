"""Data shared by every party of one process: what lets a simulation hold thousands of virtual clients.

A client daemon loads its data set and copies its own shard's rows (and the evaluation set) out of it, which is
right for one client per process. Inside ``shared_data()`` (the simulation backend, ``slperf.sim``) the same code
behaves differently, for every client built in that context (the context is a ``ContextVar``, so it follows the
simulation's tasks and the threads ``asyncio.to_thread`` starts for them, and nothing else in the process):

- ``load_dataset`` loads each data set once and hands every caller the same arrays;
- ``client_partitions`` is computed once per config, not once per client;
- a ``ShardLoader`` keeps its shard's row indices and gathers each batch from the shared arrays, instead of a
  copy of its rows; equal index arrays (the evaluation set every client holds) are kept once.

A batch is the same either way (the same rows in the same order, through the same scaling): only where the rows
live differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


class SharedData:
    """What the parties of one process share: loaded data sets, computed partitions, interned index arrays."""

    def __init__(self) -> None:
        self._memo: dict[Hashable, Any] = {}
        self._indices: dict[tuple[str, int, bytes], np.ndarray] = {}
        self._lock = threading.RLock()  # clients are set up in threads (asyncio.to_thread)

    def memo(self, key: Hashable, make: Callable[[], T]) -> T:
        """``make()`` once per key; later calls get the same object. ``make`` runs under the lock, so two clients
        set up at once do not both load a data set."""
        with self._lock:
            if key not in self._memo:
                self._memo[key] = make()
            value: T = self._memo[key]
            return value

    def intern(self, indices: np.ndarray) -> np.ndarray:
        """One read-only array per distinct content: every client's copy of the evaluation set's indices is the
        same array."""
        idx = np.ascontiguousarray(indices, dtype=np.int64)
        key = (idx.dtype.str, int(idx.size), hashlib.sha1(idx.tobytes()).digest())
        with self._lock:
            kept = self._indices.get(key)
            if kept is None:
                kept = idx.copy()
                kept.flags.writeable = False
                self._indices[key] = kept
            return kept


_SHARED: ContextVar[SharedData | None] = ContextVar("slperf_shared_data", default=None)


def current_shared() -> SharedData | None:
    """The shared data of the running context; None outside ``shared_data()`` (a daemon: one client)."""
    return _SHARED.get()


@contextlib.contextmanager
def shared_data() -> Iterator[SharedData]:
    """Parties set up inside this context (and tasks and threads started from it) share data sets and rows."""
    shared = SharedData()
    token = _SHARED.set(shared)
    try:
        yield shared
    finally:
        _SHARED.reset(token)
