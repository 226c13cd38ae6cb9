"""Fashion-MNIST: read from the pinned Debian package `dataset-fashion-mnist`, or from IDX files in data_dir.

The .deb (see artifacts.py; fetched with `apt-get download`, never installed) holds the four upstream IDX files,
gzipped, under usr/share/datasets/fashion-mnist/. They are read straight out of the package (ar container →
data.tar.xz → .gz → IDX) by archives.py and the strict IDX parser of idx.py. Either way the arrays must match
the canonical shapes and the exactly balanced label counts (6000 per class in train, 1000 in test).

Normalisation: upstream's own statistics, mean 0.2860 / std 0.3530 (pixels / 255). SLPerf normalised
Fashion-MNIST with MNIST's 0.1307 / 0.3081 instead; that only shifts the input scale.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetCorrupt
from ..spec import Arrays
from .archives import read_deb_files
from .artifacts import FASHION_IDX_HINT, ensure_artifact
from .idx import IDX_NAMES, find_idx_files, parse_idx, read_idx_file
from .mnist import grey28_arrays

DEB_ARTIFACT = "dataset-fashion-mnist"
DEB_DIR = "usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
TRAIN_PER_CLASS, TEST_PER_CLASS = 6000, 1000
# Also torchvision's layout (SLPerf's dataDir/fashionmnist/FashionMNIST/raw).
_SUBDIRS = (".", "fashionmnist", "fashion-mnist", "FashionMNIST/raw", "fashionmnist/FashionMNIST/raw")


def deb_member(key: str) -> str:
    return f"{DEB_DIR}/{IDX_NAMES[key][0]}.gz"


def read_fashion_deb(deb: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays (uint8 IDX shapes) out of the dataset-fashion-mnist .deb."""
    files = read_deb_files(deb, [deb_member(k) for k in IDX_NAMES])
    out = {}
    for key in IDX_NAMES:
        member = deb_member(key)
        try:
            raw = gzip.decompress(files[member])
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetCorrupt(f"{Path(deb).name}:{member} is not a complete gzip file ({exc})") from None
        out[key] = parse_idx(raw, what=f"{Path(deb).name}:{member}", ndim=3 if key.endswith("_x") else 1)
    return out


def find_fashion_idx_files(data_dir: str | os.PathLike[str]) -> dict[str, Path]:
    return find_idx_files(data_dir, _SUBDIRS, dataset="Fashion-MNIST", hint=FASHION_IDX_HINT)


def verify_fashion(raw: dict[str, np.ndarray], source: str) -> None:
    fix = "use the original Fashion-MNIST files, or leave data_dir unset to use the pinned Debian package"
    for split, n, per in (("train", 60000, TRAIN_PER_CLASS), ("test", 10000, TEST_PER_CLASS)):
        x, y = raw[f"{split}_x"], raw[f"{split}_y"]
        if x.shape != (n, 28, 28) or x.dtype != np.uint8:
            raise DatasetCorrupt(
                f"Fashion-MNIST from {source}: {split} images are {x.dtype} {x.shape}, expected uint8 {(n, 28, 28)} "
                f"({fix})"
            )
        if y.shape != (n,) or y.dtype.kind not in "iu" or (n and (int(y.min()) < 0 or int(y.max()) > 9)):
            raise DatasetCorrupt(f"Fashion-MNIST from {source}: {split} labels are not {n} classes 0..9 ({fix})")
        counts = np.bincount(y, minlength=10)
        if not np.all(counts == per):
            raise DatasetCorrupt(
                f"Fashion-MNIST from {source}: {split} label counts {counts.tolist()} are not {per} per class ({fix})"
            )


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Arrays:
    """Decodes and verifies Fashion-MNIST: from IDX files in data_dir if given, else from the pinned .deb."""
    if data_dir is not None:
        files = find_fashion_idx_files(data_dir)
        raw = {k: read_idx_file(p, ndim=3 if k.endswith("_x") else 1) for k, p in files.items()}
        source = f"IDX files in {data_dir}"
    else:
        deb = ensure_artifact(DEB_ARTIFACT, cache_dir)
        raw, source = read_fashion_deb(deb), deb.name
    verify_fashion(raw, source)
    return grey28_arrays(raw)
