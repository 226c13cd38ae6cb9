"""A reader for the subset of Zarr v3 that the MNIST wheel's store uses, from a zip, with numcodecs only.

Regular chunk grid, default chunk keys, codecs ``bytes`` then optionally ``blosc``. Zarr stores edge chunks
padded to the full chunk shape, so they are trimmed. zarr itself is never installed or imported.
"""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np

from ..errors import DatasetCorrupt

_ZARR_DTYPES = {
    "bool": "|b1",
    "int8": "|i1",
    "uint8": "|u1",
    "int16": "i2",
    "uint16": "u2",
    "int32": "i4",
    "uint32": "u4",
    "int64": "i8",
    "uint64": "u8",
    "float32": "f4",
    "float64": "f8",
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
