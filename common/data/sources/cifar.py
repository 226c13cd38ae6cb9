"""CIFAR-10 from the user's python batches, and `cifar10-synthetic`, a generated CIFAR-shaped stand-in.

No package registry ships CIFAR-10, so the real set is read only from files the
user supplies: the `cifar-10-batches-py` folder of the official python tarball (data_batch_1..5, test_batch).
Those files are Python pickles; they are decoded by the restricted reader in safe_pickle.py and never by
pickle. Each batch is a dict with b'data' (N×3072 uint8, rows of 1024 red, 1024 green, 1024 blue values, each
plane row-major, i.e. already C×H×W) and b'labels' (N ints). The loaded set must have the canonical 50000 /
10000 images with 5000 / 1000 per class. A folder written by `slperf data fetch cifar10`
(<cache>/downloads/cifar10/) is used when data_dir is not given.

`cifar10-synthetic` is NOT CIFAR-10: seeded generated images of the same shapes and class balance (50000 /
10000 × 3×32×32 uint8, 10 classes), for tests and communication / latency benchmarks, whose cut-layer sizes
depend only on shapes. Each class is one (colour, stripe orientation) pair: five base colours × horizontal or
vertical stripes; every image draws its own stripe period and phase, colour jitter, background level,
contrast and pixel noise. A model must combine colour and texture to tell the classes apart, so it is
learnable but not trivially so. Accuracy measured on it says nothing about CIFAR-10.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..cache import resolve_cache_dir
from ..errors import DatasetCorrupt, DatasetUnavailable
from ..spec import Arrays
from .safe_pickle import safe_load

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_PER_CLASS, TEST_PER_CLASS = 5000, 1000
_SUBDIRS = (".", BATCH_DIR, f"cifar10/{BATCH_DIR}", f"cifar-10/{BATCH_DIR}")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def missing_message(where: str) -> str:
    return (
        f"CIFAR-10 is not available offline: {where} (no package registry ships it). Put the python batches "
        f"({BATCH_DIR}/data_batch_1..5 and test_batch, from {CIFAR_URL}) in a folder and set data_dir to it, or run "
        "`slperf data fetch cifar10` on a machine that reaches www.cs.toronto.edu; for tests and communication or "
        "latency benchmarks use the data set `cifar10-synthetic` (generated, not CIFAR-10)"
    )


def find_cifar10_dir(data_dir: str | os.PathLike[str]) -> Path:
    root = Path(data_dir).expanduser()
    for sub in _SUBDIRS:
        folder = root / sub
        if all((folder / name).is_file() for name in (*TRAIN_FILES, TEST_FILE)):
            return folder
    raise DatasetUnavailable(
        missing_message(f"data_dir {root} does not hold {BATCH_DIR}/data_batch_1..5 and test_batch")
    )


def cifar10_files(data_dir: str | os.PathLike[str]) -> list[Path]:
    folder = find_cifar10_dir(data_dir)
    return [folder / name for name in (*TRAIN_FILES, TEST_FILE)]


def _key(d: dict, name: str):
    for k in (name, name.encode("latin-1")):
        if k in d:
            return d[k]
    return None


def read_cifar_batch(path: str | os.PathLike[str], *, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×3×32×32, labels int64 N) of one CIFAR-10 python batch, via the restricted reader."""
    path = Path(path)
    what = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetUnavailable(f"cannot read {path} ({exc.strerror or exc})") from None
    batch = safe_load(raw, what=what)
    if not isinstance(batch, dict):
        raise DatasetCorrupt(f"{what}: holds a {type(batch).__name__}, not a CIFAR batch dict")
    data, labels = _key(batch, "data"), _key(batch, "labels")
    if labels is None and _key(batch, "fine_labels") is not None:
        raise DatasetCorrupt(f"{what}: this is a CIFAR-100 batch (fine_labels), not CIFAR-10")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetCorrupt(f"{what}: 'data' is {got}, expected a uint8 N×3072 array")
    if not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise DatasetCorrupt(f"{what}: 'labels' is not a list of integers")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(data):
        raise DatasetCorrupt(f"{what}: {len(data)} images but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DatasetCorrupt(f"{what}: labels fall outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), y


def read_cifar10_dir(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    folder = Path(folder)
    parts = [read_cifar_batch(folder / name) for name in TRAIN_FILES]
    test_x, test_y = read_cifar_batch(folder / TEST_FILE)
    return {
        "train_x": np.concatenate([p[0] for p in parts]),
        "train_y": np.concatenate([p[1] for p in parts]),
        "test_x": test_x,
        "test_y": test_y,
    }


def verify_cifar10(raw: dict[str, np.ndarray], source: str) -> None:
    fix = "use the original CIFAR-10 python batches"
    for split, per in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        x, y = raw[f"{split}_x"], raw[f"{split}_y"]
        n = per * 10
        if x.shape != (n, 3, 32, 32):
            raise DatasetCorrupt(
                f"CIFAR-10 from {source}: {split} images have shape {x.shape}, expected {(n, 3, 32, 32)} ({fix})"
            )
        counts = np.bincount(y, minlength=10)
        if not np.all(counts == per):
            raise DatasetCorrupt(
                f"CIFAR-10 from {source}: {split} label counts {counts.tolist()} are not {per} per class ({fix})"
            )


def load_cifar10(data_dir: Path | None = None, cache_dir: Path | None = None) -> Arrays:
    if data_dir is None:
        fetched = resolve_cache_dir(cache_dir) / "downloads" / "cifar10"
        try:
            folder = find_cifar10_dir(fetched)
        except DatasetUnavailable:
            raise DatasetUnavailable(missing_message("data_dir is not set")) from None
    else:
        folder = find_cifar10_dir(data_dir)
    raw = read_cifar10_dir(folder)
    verify_cifar10(raw, str(folder))
    return Arrays(**raw)


# ---- cifar10-synthetic ---------------------------------------------------------------------------------------

SYNTHETIC_SEED = 20_240_601
SYNTHETIC_SIZES = (50_000, 10_000)
# Base colours (RGB in 0..1); class c uses colour c % 5 and stripes along y (c < 5) or along x (c >= 5).
_COLOURS = np.array(
    [[0.85, 0.25, 0.20], [0.25, 0.75, 0.30], [0.25, 0.35, 0.85], [0.85, 0.80, 0.25], [0.70, 0.30, 0.75]],
    dtype=np.float32,
)
SYNTHETIC_CLASSES = tuple(
    f"{colour} {stripes}"
    for stripes in ("horizontal-stripes", "vertical-stripes")
    for colour in ("red", "green", "blue", "yellow", "magenta")
)
_CHUNK = 2_500


def _render(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    f32 = np.float32
    colour = _COLOURS[labels % 5] + rng.uniform(-0.15, 0.15, size=(n, 3)).astype(f32)
    background = rng.uniform(0.05, 0.55, size=(n, 1, 1, 1)).astype(f32)
    contrast = rng.uniform(0.5, 0.9, size=(n, 1, 1, 1)).astype(f32)
    period = rng.uniform(4.0, 10.0, size=(n, 1, 1)).astype(f32)
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1)).astype(f32)
    coord = np.arange(32, dtype=f32)
    along_y = (labels < 5)[:, None, None]
    grid = np.where(along_y, coord[None, :, None], coord[None, None, :])  # n×32×32
    wave = np.sin(f32(2 * np.pi) * grid / period + phase)
    wave = f32(0.5) + f32(0.5) * wave
    # Pixel noise: uniform on [-0.15, 0.15] (std 0.087), drawn as raw bytes because that is ~10x cheaper than
    # normal variates and the data set is generated on first use.
    img = np.frombuffer(rng.bytes(n * 3 * 32 * 32), dtype=np.uint8).reshape(n, 3, 32, 32).astype(f32)
    img *= f32(0.3 / 255.0)
    img += background - f32(0.15)
    img += (contrast * colour[:, :, None, None]) * wave[:, None, :, :]
    img *= f32(255.0)
    np.clip(img, 0, 255, out=img)
    return np.rint(img).astype(np.uint8)


def generate_synthetic_cifar(
    n_train: int = SYNTHETIC_SIZES[0], n_test: int = SYNTHETIC_SIZES[1], seed: int = SYNTHETIC_SEED
) -> Arrays:
    """The cifar10-synthetic arrays: balanced labels in a seeded order, images rendered in seeded chunks.

    Depends only on (n_train, n_test, seed); the sizes must be multiples of 10.
    """
    if n_train % 10 or n_test % 10:
        raise ValueError("synthetic CIFAR sizes must be multiples of 10 (balanced classes)")
    out = {}
    for tag, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        labels = np.random.default_rng([seed, tag, 0]).permutation(np.repeat(np.arange(10), n // 10)).astype(np.int64)
        images = np.empty((n, 3, 32, 32), dtype=np.uint8)
        for start in range(0, n, _CHUNK):
            rng = np.random.default_rng([seed, tag, 1, start])
            images[start : start + _CHUNK] = _render(labels[start : start + _CHUNK], rng)
        out[f"{split}_x"], out[f"{split}_y"] = images, labels
    return Arrays(**out)


def load_cifar10_synthetic(data_dir: Path | None = None, cache_dir: Path | None = None) -> Arrays:
    if data_dir is not None:
        raise DatasetUnavailable(
            "cifar10-synthetic is generated and reads no files: leave data_dir unset "
            "(for real CIFAR-10 files use the data set `cifar10`)"
        )
    return generate_synthetic_cifar()
