"""The IDX format of the original MNIST and Fashion-MNIST files: a strict parser, and finding the four files.

Header: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian uint32;
the payload must be exactly prod(dims) items.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetCorrupt, DatasetUnavailable

# The largest IDX file of the data sets read with it (MNIST and Fashion-MNIST training images: 60 000 x 28 x 28 bytes
# and a 16-byte header), with room to spare; a file, or what a .gz file decompresses to, above it is refused
# before it is held in memory (a 1 MB gzip bomb used to decompress to 2 GB).
MAX_IDX_BYTES = 64 << 20

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, *, what: str = "IDX data", ndim: int | None = None) -> np.ndarray:
    """Parses an IDX file's bytes (the format of the original MNIST files) into a native-endian array.

    Header: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian uint32;
    the payload must be exactly prod(dims) items. Raises DatasetCorrupt when anything disagrees.
    """
    if len(data) < 4:
        raise DatasetCorrupt(f"{what}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DatasetCorrupt(f"{what}: bad IDX magic {data[:4].hex()} (not an IDX file)")
    dims_n = data[3]
    if dims_n == 0 or (ndim is not None and dims_n != ndim):
        want = f"{ndim}" if ndim is not None else "at least 1"
        raise DatasetCorrupt(f"{what}: IDX header says {dims_n} dimensions, expected {want}")
    header = 4 + 4 * dims_n
    if len(data) < header:
        raise DatasetCorrupt(f"{what}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=dims_n, offset=4))
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = math.prod(dims) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise DatasetCorrupt(f"{what}: truncated: {got} payload bytes for dims {dims}, expected {expected}")
    if got > expected:
        raise DatasetCorrupt(f"{what}: {got - expected} unexpected bytes after the {expected}-byte payload")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx_file(
    path: str | os.PathLike[str], *, ndim: int | None = None, max_bytes: int = MAX_IDX_BYTES
) -> np.ndarray:
    """Reads an IDX file, gunzipping it first when its name ends in .gz; more than ``max_bytes`` (of the file,
    or of what it decompresses to: read in pieces, never more than ``max_bytes`` + 1 held) is DatasetCorrupt."""
    path = Path(path)
    too_big = f"{path}: more than {max_bytes} bytes{{}}; no IDX file of these data sets is that large"
    try:
        if path.stat().st_size > max_bytes and path.suffix != ".gz":
            raise DatasetCorrupt(too_big.format(""))
        if path.suffix == ".gz":
            try:
                with gzip.open(path, "rb") as f:
                    raw = f.read(max_bytes + 1)
            except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                raise DatasetCorrupt(f"{path}: not a complete gzip file ({exc})") from None
            if len(raw) > max_bytes:
                raise DatasetCorrupt(too_big.format(" once decompressed"))
        else:
            raw = path.read_bytes()
    except OSError as exc:
        raise DatasetUnavailable(f"cannot read {path} ({exc.strerror or exc})") from None
    return parse_idx(raw, what=str(path), ndim=ndim)


IDX_NAMES = {
    "train_x": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_y": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_x": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_y": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


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


def write_idx_dir(arrays: dict[str, np.ndarray], folder: str | os.PathLike[str]) -> list[Path]:
    """Writes ``train_x``/``train_y``/``test_x``/``test_y`` (uint8 grey images, labels 0..255) as the four original IDX
    files (their first names in IDX_NAMES) into ``folder``: what ``find_idx_files`` and the readers take back."""
    from slperf.common.fsutil import atomic_write

    root = Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for key, names in IDX_NAMES.items():
        arr = np.ascontiguousarray(arrays[key]).astype(np.uint8, copy=False)
        if arr.ndim == 4 and arr.shape[1] == 1:  # N x 1 x H x W (the arrays' layout) is N x H x W in IDX
            arr = arr.reshape(arr.shape[0], *arr.shape[2:])
        header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
        path = root / names[0]
        atomic_write(path, header + arr.tobytes())
        written.append(path)
    return written
