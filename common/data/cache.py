"""The on-disk cache: downloaded artifacts and decoded arrays.

Layout under the cache dir (env SLPERF_CACHE, else ~/.cache/slperf):

    artifacts/<file>                      registry downloads, checked by sha256 (see sources/artifacts.py)
    arrays/<key>/{train_x,...}.npy        decoded arrays, one .npy per array
    arrays/<key>/meta.json                written last: its presence marks the set as complete

A data set is decoded once; every later process maps the .npy files read-only (`np.load(mmap_mode="r")`),
so start-up costs milliseconds and the pages are shared through the OS file cache between the processes
of one machine. Every file is written with `fsutil.atomic_write` (a temporary file in the same folder, moved
into place), so a reader never sees a half-written file even when two processes fill the cache at once (they
write identical content and the last rename wins). The files are 0644: other users of a machine may share
the cache.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from slperf.common.fsutil import atomic_write

CACHE_ENV = "SLPERF_CACHE"
CACHE_FORMAT = 1
_META = "meta.json"


def default_cache_dir() -> Path:
    """$SLPERF_CACHE if set and non-empty, else ~/.cache/slperf."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slperf"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def arrays_dir(cache_dir: str | os.PathLike[str] | None, key: str) -> Path:
    return resolve_cache_dir(cache_dir) / "arrays" / key


def save_arrays(
    cache_dir: str | os.PathLike[str] | None,
    key: str,
    arrays: Mapping[str, np.ndarray],
    *,
    source: str = "",
) -> Path:
    """Writes each array to arrays/<key>/<name>.npy atomically, then meta.json; returns the folder."""
    folder = arrays_dir(cache_dir, key)
    folder.mkdir(parents=True, exist_ok=True)
    # A stale meta.json must not vouch for a set that is being replaced.
    try:
        os.unlink(folder / _META)
    except FileNotFoundError:
        pass
    entries = {}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        atomic_write(folder / f"{name}.npy", lambda fh, a=arr: np.save(fh, a, allow_pickle=False))
        entries[name] = {"shape": list(arr.shape), "dtype": arr.dtype.str}
    meta = {"format": CACHE_FORMAT, "source": source, "arrays": entries}
    atomic_write(folder / _META, json.dumps(meta, indent=1).encode())
    return folder


# np.load parses each .npy header with ast.literal_eval, and CPython 3.11's AST constructor is not thread-safe: two
# threads compiling at once can raise "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905).
# The sim backend and the in-process test harness load every client's data on threads of one process, so a header
# is parsed by one thread at a time (mapping stays lazy: the lock covers microseconds per array).
_NPY_HEADER_LOCK = threading.Lock()


def load_arrays(
    cache_dir: str | os.PathLike[str] | None, key: str, names: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], str] | None:
    """Maps the cached arrays read-only; returns (arrays, source) or None when the set is missing or damaged.

    A damaged set (unreadable meta, a missing or truncated .npy, a shape or dtype that disagrees with
    meta.json) is reported as missing, so the caller decodes it again and overwrites it.
    """
    folder = arrays_dir(cache_dir, key)
    try:
        meta = json.loads((folder / _META).read_text())
        if meta.get("format") != CACHE_FORMAT:
            return None
        out = {}
        for name in names:
            want = meta["arrays"][name]
            with _NPY_HEADER_LOCK:
                arr = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != list(want["shape"]) or arr.dtype.str != want["dtype"]:
                return None
            out[name] = arr
        return out, str(meta.get("source", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None
