"""The strict IDX parser: round trips on small generated files and rejection of damaged ones."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from file_encoders import encode_idx

from slperf.common.data import DatasetCorrupt
from slperf.common.data.sources.idx import parse_idx, read_idx_file


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([3, 1, 4, 1, 5], dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int8).reshape(3, 4),
        np.arange(12, dtype=np.int16).reshape(3, 4) * -300,
        np.arange(10, dtype=np.int32) * 100_000,
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
        np.linspace(-1, 1, 6, dtype=np.float64),
        np.zeros((0, 28, 28), dtype=np.uint8),
    ],
)
def test_round_trip(arr):
    out = parse_idx(encode_idx(arr))
    assert out.shape == arr.shape and out.dtype == arr.dtype.newbyteorder("=")
    assert np.array_equal(out, arr)
    assert out.flags.writeable


def test_header_is_the_documented_layout():
    data = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    assert data[:4] == bytes([0, 0, 0x08, 3])
    assert data[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    assert len(data) == 16 + 2 * 28 * 28


def test_big_endian_payload():
    data = encode_idx(np.array([1, 256], dtype=np.int32))
    assert data[8:] == bytes([0, 0, 0, 1, 0, 0, 1, 0])


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_files_plain_and_gzipped(tmp_path, suffix):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    raw = encode_idx(arr)
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix else raw)
    assert np.array_equal(read_idx_file(path, ndim=3), arr)


GOOD = encode_idx(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "too short"),
        (b"\x00\x00\x08", "too short"),
        (b"\x01\x00\x08\x03" + GOOD[4:], "bad IDX magic"),
        (b"\x00\x00\x07\x03" + GOOD[4:], "bad IDX magic"),  # unknown type code
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (GOOD[:10], "truncated IDX header"),
        (GOOD[:-1], "truncated: 23 payload bytes"),
        (GOOD[:16], "truncated: 0 payload bytes"),
        (GOOD + b"\x00", "1 unexpected bytes"),
        (b"\x00\x00\x08\x01\xff\xff\xff\xff" + b"\x00" * 8, "truncated"),  # absurd dim, no huge allocation
    ],
)
def test_rejects_damaged_data(data, match):
    with pytest.raises(DatasetCorrupt, match=match) as info:
        parse_idx(data)
    assert "\n" not in str(info.value)


def test_rejects_wrong_dimension_count():
    with pytest.raises(DatasetCorrupt, match="3 dimensions, expected 1"):
        parse_idx(GOOD, ndim=1)


def test_rejects_truncated_gzip(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(encode_idx(np.arange(100, dtype=np.uint8)))[:-12])
    with pytest.raises(DatasetCorrupt, match="not a complete gzip file"):
        read_idx_file(path)


def test_rejects_truncated_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(encode_idx(np.arange(100, dtype=np.uint8))[:-5])
    with pytest.raises(DatasetCorrupt, match=r"t10k-labels-idx1-ubyte: truncated"):
        read_idx_file(path, ndim=1)


def test_encode_rejects_unsupported_dtype():
    with pytest.raises(ValueError, match="IDX cannot hold"):
        encode_idx(np.zeros(3, dtype=np.int64))


def test_a_gzip_that_decompresses_beyond_the_bound_is_refused_without_holding_it(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros((8, 512, 512), dtype=np.uint8))))  # 2 MiB, ~2 KiB zipped
    with pytest.raises(DatasetCorrupt, match=r"more than 1048576 bytes once decompressed"):
        read_idx_file(path, ndim=3, max_bytes=1 << 20)
    assert read_idx_file(path, ndim=3, max_bytes=4 << 20).shape == (8, 512, 512)


def test_a_plain_file_beyond_the_bound_is_refused_unread(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(encode_idx(np.zeros((8, 512, 512), dtype=np.uint8)))
    with pytest.raises(DatasetCorrupt, match=r"more than 1048576 bytes; no IDX file"):
        read_idx_file(path, ndim=3, max_bytes=1 << 20)
