"""ShardLoader batches and cap_indices, on a small synthetic data set and on the real MNIST cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slperf.common.data import (
    Arrays,
    DatasetSpec,
    LoadedDataset,
    ShardLoader,
    cap_indices,
    load_dataset,
    partition,
)


def _tiny(n_train: int = 103, n_test: int = 17) -> LoadedDataset:
    rng = np.random.default_rng(0)
    spec = DatasetSpec(
        name="tiny",
        num_classes=3,
        input_shape=(2, 4, 4),
        mean=(0.5, 0.25),
        std=(0.5, 0.2),
        loader=lambda d, c: None,  # never called: the arrays are built here
    )
    arrays = Arrays(
        train_x=rng.integers(0, 256, size=(n_train, 2, 4, 4), dtype=np.uint8),
        train_y=(np.arange(n_train) % 3).astype(np.int64),
        test_x=rng.integers(0, 256, size=(n_test, 2, 4, 4), dtype=np.uint8),
        test_y=(np.arange(n_test) % 3).astype(np.int64),
    )
    return LoadedDataset(spec, arrays, source="test")


TINY = _tiny()


def _collect(loader: ShardLoader, epoch: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader.batches(epoch, **kw))
    return torch.cat(xs), torch.cat(ys)


def test_shapes_dtypes_and_counts():
    idx = np.arange(0, 103, 2)  # 52 samples
    loader = ShardLoader(TINY, idx, batch_size=8, seed=1, client_index=0)
    assert loader.num_samples == 52
    assert loader.num_batches() == 7 and loader.num_batches(drop_last=True) == 6 and len(loader) == 7
    batches = list(loader.batches(0))
    assert len(batches) == 7
    for x, y in batches[:-1]:
        assert x.shape == (8, 2, 4, 4) and x.dtype == torch.float32
        assert y.shape == (8,) and y.dtype == torch.int64
    assert batches[-1][0].shape == (4, 2, 4, 4)
    dropped = list(loader.batches(0, drop_last=True))
    assert len(dropped) == 6 and all(x.shape[0] == 8 for x, _ in dropped)
    # drop_last keeps the same order and just leaves the tail out
    assert torch.equal(torch.cat([y for _, y in dropped]), torch.cat([y for _, y in batches])[:48])


def test_normalisation_matches_formula():
    idx = np.array([5, 1, 77, 42])
    loader = ShardLoader(TINY, idx, batch_size=4, seed=0, client_index=0)
    x, y = next(loader.batches(0, shuffle=False))
    raw = TINY.arrays.train_x[idx].astype(np.float32)
    mean = np.array([0.5, 0.25], np.float32).reshape(1, 2, 1, 1)
    std = np.array([0.5, 0.2], np.float32).reshape(1, 2, 1, 1)
    want = (raw / np.float32(255.0) - mean) / std
    assert np.allclose(x.numpy(), want, atol=1e-6, rtol=0)
    assert y.tolist() == TINY.arrays.train_y[idx].tolist()


def test_every_sample_once_per_epoch_and_labels_follow_images():
    idx = np.arange(10, 90)
    loader = ShardLoader(TINY, idx, batch_size=7, seed=3, client_index=2)
    x, y = _collect(loader, 4)
    assert x.shape[0] == 80
    ref_x = ShardLoader(TINY, idx, batch_size=80, seed=3, client_index=2)
    rx, ry = next(ref_x.batches(0, shuffle=False))
    # same multiset of rows; and each label stays with its image
    order = loader.order(4)
    assert sorted(order.tolist()) == list(range(80))
    assert torch.equal(x, rx[torch.from_numpy(order)]) and torch.equal(y, ry[torch.from_numpy(order)])


def test_determinism_and_order_changes():
    idx = np.arange(0, 100)
    a = ShardLoader(TINY, idx, batch_size=16, seed=7, client_index=1)
    b = ShardLoader(TINY, idx, batch_size=16, seed=7, client_index=1)  # e.g. a reference run
    for epoch in (0, 1, 5):
        xa, ya = _collect(a, epoch)
        xb, yb = _collect(b, epoch)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not np.array_equal(a.order(0), a.order(1)), "epochs differ"
    other_client = ShardLoader(TINY, idx, batch_size=16, seed=7, client_index=2)
    other_seed = ShardLoader(TINY, idx, batch_size=16, seed=8, client_index=1)
    assert not np.array_equal(a.order(0), other_client.order(0))
    assert not np.array_equal(a.order(0), other_seed.order(0))
    assert np.array_equal(a.order(3), np.random.default_rng([7, 1, 3]).permutation(100))
    np.random.seed(0)
    torch.manual_seed(0)
    assert np.array_equal(a.order(2), b.order(2)), "global RNG state does not matter"


def test_no_shuffle_keeps_index_order():
    idx = np.array([9, 3, 50])
    loader = ShardLoader(TINY, idx, batch_size=2, seed=0, client_index=0)
    _, y = _collect(loader, 0, shuffle=False)
    assert y.tolist() == TINY.arrays.train_y[idx].tolist()


def test_test_split_and_all_indices():
    loader = ShardLoader(TINY, None, batch_size=5, seed=0, client_index=0, train=False)
    assert loader.num_samples == 17 and loader.num_batches() == 4
    _, y = _collect(loader, 0, shuffle=False)
    assert y.tolist() == TINY.arrays.test_y.tolist()


def test_empty_shard_yields_nothing():
    loader = ShardLoader(TINY, np.array([], dtype=np.int64), batch_size=4, seed=0, client_index=0)
    assert loader.num_samples == 0 and loader.num_batches() == 0 and list(loader.batches(0)) == []


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"indices": np.array([0, 103]), "batch_size": 4}, "indices must lie"),
        ({"indices": np.array([-1]), "batch_size": 4}, "indices must lie"),
        ({"indices": np.array([[0, 1]]), "batch_size": 4}, "1-D integer"),
        ({"indices": np.array([0.5]), "batch_size": 4}, "1-D integer"),
        ({"indices": None, "batch_size": 0}, "batch_size"),
        ({"indices": None, "batch_size": 4, "seed": -1}, "seed"),
        ({"indices": None, "batch_size": 4, "client_index": -2}, "client_index"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"seed": 0, "client_index": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        ShardLoader(TINY, **args)


def test_negative_epoch_rejected():
    loader = ShardLoader(TINY, None, batch_size=4, seed=0, client_index=0)
    with pytest.raises(ValueError, match="epoch"):
        next(loader.batches(-1))


def test_cap_indices():
    idx = np.arange(1000, 2000)[::-1]
    capped = cap_indices(idx, 100, seed=4)
    assert capped.size == 100 and capped.dtype == np.int64
    assert np.all(np.diff(capped) > 0) and np.isin(capped, idx).all()
    assert np.array_equal(capped, cap_indices(idx, 100, seed=4))
    assert not np.array_equal(capped, cap_indices(idx, 100, seed=5))
    assert np.array_equal(cap_indices(idx, None, seed=4), np.sort(idx))
    assert np.array_equal(cap_indices(idx, 5000, seed=4), np.sort(idx))
    assert cap_indices(idx, 0, seed=4).size == 0
    with pytest.raises(ValueError, match="max_samples"):
        cap_indices(idx, -3, seed=0)


def test_real_mnist_shard_holds_only_its_rows():
    ds = load_dataset("mnist")  # the default cache: decoded on first use, memory-mapped afterwards
    shards = partition(ds.arrays.train_y, "hetero", 4, seed=0, alpha=0.5)
    loader = ShardLoader(ds, shards[1], batch_size=64, seed=0, client_index=1)
    assert loader.num_samples == shards[1].size
    assert type(loader._x) is np.ndarray and loader._x.flags.owndata  # a private copy, not the map
    assert not np.shares_memory(loader._x, ds.arrays.train_x)
    assert loader._x.nbytes == shards[1].size * 28 * 28
    x, y = next(loader.batches(0))
    assert x.shape == (64, 1, 28, 28) and y.dtype == torch.int64
    full = ShardLoader(ds, None, batch_size=10, seed=0, client_index=0)
    x, y = next(full.batches(0, shuffle=False))
    assert y.tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    xs = torch.cat(
        [
            b[0]
            for b in ShardLoader(
                ds, cap_indices(np.arange(60000), 5000, 0), batch_size=1000, seed=0, client_index=0
            ).batches(0)
        ]
    )
    assert abs(float(xs.mean())) < 0.05 and abs(float(xs.std()) - 1.0) < 0.05
