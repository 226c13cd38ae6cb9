"""A silo's inputs for ``slperf predict``, read and prepared exactly as training prepared its data.

Formats: ``.npy`` (an array of samples, read with ``allow_pickle=False``) and ``.csv`` (one sample a row,
numbers only, an optional header row; a row is reshaped to the sample shape). A folder of images is not read:
it would need Pillow, which slperf does not depend on; convert the images to one ``.npy`` instead.

Preparation: ``uint8`` samples of an image data set are raw pixels and get what the data loader does to them
(``x/255``, then ``(x - mean)/std`` per channel, see ``ShardLoader``); samples of any other dtype (CSV is read as
float32) are taken as the model's input already, unchanged, as tabular features are in training. Single-channel
images may come without the channel axis (``N×H×W``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from slperf.common.data.spec import DatasetSpec


class InputError(ValueError):
    """The input file cannot be used for this run's model; the message names the file and what is wrong."""


def read_samples(path: Path, spec: DatasetSpec, sample_shape: tuple[int, ...]) -> np.ndarray:
    """The samples in ``path`` as an array ``N × *sample_shape`` (its dtype kept: see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{path} is a folder: reading images needs Pillow, which slperf does not depend on; save the images "
            "as one .npy array (N×H×W or N×C×H×W, uint8 pixels) or use a .csv"
        )
    suffix = path.suffix.lower()
    array: np.ndarray
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            array = _read_csv(path)
        else:
            raise InputError(f"{path}: unknown input format {suffix or '(none)'}; use .npy or .csv")
    except (OSError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path} cannot be read: {exc}") from None
    if array.ndim == 0 or array.shape[0] == 0:
        raise InputError(f"{path} holds no samples")
    if array.dtype.kind not in "uif":
        raise InputError(f"{path}: samples of dtype {array.dtype} are not numbers")
    n = array.shape[0]
    if array.shape[1:] == sample_shape:
        return array
    if spec.kind == "image" and sample_shape[0] == 1 and array.shape[1:] == sample_shape[1:]:
        return array.reshape(n, *sample_shape)  # N×H×W single-channel images
    size = int(np.prod(sample_shape))
    if array.ndim == 2 and array.shape[1] == size:
        return array.reshape(n, *sample_shape)  # flat rows (CSV)
    raise InputError(
        f"{path}: samples of shape {list(array.shape[1:])}; the model of this run takes {list(sample_shape)}"
        + (" (or the same without the channel axis)" if spec.kind == "image" and sample_shape[0] == 1 else "")
    )


def _read_csv(path: Path) -> np.ndarray:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]  # a header
    if not rows:
        return np.zeros((0,), dtype=np.float32)
    width = len(rows[0])
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise InputError(f"{path}: row {number} has {len(row)} values, the first has {width}")
        if not _numeric(row):
            raise InputError(f"{path}: row {number} holds a value that is not a number")
    return np.asarray(rows, dtype=np.float32)


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def prepare(batch: np.ndarray, spec: DatasetSpec) -> torch.Tensor:
    """One batch as the model's float32 input (see the module docstring)."""
    x = torch.from_numpy(np.ascontiguousarray(batch))
    if batch.dtype == np.uint8 and spec.kind == "image":
        x = x.to(torch.float32).div_(255.0)
        if spec.mean:
            shape = (1, len(spec.mean)) + (1,) * (x.dim() - 2)
            mean = torch.tensor(spec.mean, dtype=torch.float32).reshape(shape)
            std = torch.tensor(spec.std, dtype=torch.float32).reshape(shape)
            x = x.sub_(mean).div_(std)
        return x
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise InputError("the input holds NaN or infinite values")
    return x
