"""Writers for the file formats the data readers parse, used only to build test files: the IDX encoding of an
array (inverse of `idx.parse_idx`) and an `ar` archive (inverse of `archives.read_ar`)."""

from __future__ import annotations

import numpy as np

from slperf.common.data.sources.archives import AR_FMAG, AR_MAGIC
from slperf.common.data.sources.idx import IDX_TYPES

_IDX_CODES = {np.dtype(v).newbyteorder(">"): k for k, v in IDX_TYPES.items()}


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding of an array (inverse of parse_idx)."""
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


def write_ar(members: dict[str, bytes]) -> bytes:
    """The `ar` encoding of members (inverse of read_ar; names of at most 15 ASCII characters)."""
    out = [AR_MAGIC]
    for name, payload in members.items():
        if len(name) > 15 or not name.isascii():
            raise ValueError(f"ar member names need at most 15 ASCII characters: {name!r}")
        head = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(payload):<10}".encode("ascii") + AR_FMAG
        out += [head, payload, b"\n" if len(payload) & 1 else b""]
    return b"".join(out)
