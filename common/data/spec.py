"""What a data set is: its split arrays (`Arrays`), its description (`DatasetSpec`, `Feature`) and a loaded set.

The types sit apart from the registry (registry.py) and the built-in registrations (builtin.py), so that the
readers in sources/ can build `Arrays` without importing the registry that lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ARRAY_NAMES = ("train_x", "train_y", "test_x", "test_y")


@dataclass(frozen=True)
class Arrays:
    """One data set's split: images uint8 N×C×H×W (MNIST: C=1) or tabular features float32 N×F (already
    encoded and standardised, see sources/tabular.py); labels int64 of shape (N,).

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


Loader = Callable[[Path | None, Path], Arrays]

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
    source_files: Callable[[Path], Sequence[Path]] | None = None
    artifact: str | None = None  # key in sources.artifacts.ARTIFACTS of the default source, for logs
    description: str = ""
    cacheable: bool = True
    kind: str = "image"
    augment: str | None = None
    features: tuple[Feature, ...] = ()
    class_names: tuple[str, ...] = ()
    synthetic: bool = False
    # The split sizes of the real data set (None: unknown). The server holds no data, so this is what bounds the
    # sample counts a client may claim (slperf.slserver.figures); an upper bound, so a smaller data_dir is fine.
    train_size: int | None = None
    test_size: int | None = None
    cache_tag: str = ""  # bumped when the decoder's output changes, so stale cached arrays are not reused
    # Writes the set's original files into a folder from its arrays (``download: true`` fills a data_dir that does
    # not hold them); None: the set cannot be written back, and such a data_dir is read from the pinned copy.
    fill_dir: Callable[[dict[str, np.ndarray], Path], object] | None = None

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
                    raise ValueError(
                        f"{self.name}: features cover {pos} columns, input_shape says {self.input_shape[0]}"
                    )
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
