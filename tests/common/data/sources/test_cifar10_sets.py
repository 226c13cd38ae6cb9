"""cifar10 (user files only) and cifar10-synthetic, and the training augmentation (random crop with 4-pixel
padding + horizontal flip) in ShardLoader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from slperf.common.data import DATASETS, DatasetCorrupt, DatasetUnavailable, LoadedDataset, ShardLoader, load_dataset
from slperf.common.data.loader import CROP_PAD, random_crop_flip
from slperf.common.data.sources import cifar


def _write_batches(folder: Path, train_x, train_y, test_x, test_y) -> None:
    """Python batches in the official layout (written with pickle.dumps; the loader never reads with pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(train_y)), 5)
    for i, idx in enumerate(parts, 1):
        batch = {
            b"batch_label": b"training batch %d of 5" % i,
            b"labels": train_y[idx].tolist(),
            b"data": train_x[idx].reshape(len(idx), -1),
            b"filenames": [b"f.png"] * len(idx),
        }
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": test_y.tolist(),
        b"data": test_x.reshape(len(test_y), -1),
        b"filenames": [b"f.png"] * len(test_y),
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))


@pytest.fixture
def small_cifar(monkeypatch):
    """A tiny stand-in for the official batches: 3 train / 2 test images per class."""
    monkeypatch.setattr(cifar, "TRAIN_PER_CLASS", 3)
    monkeypatch.setattr(cifar, "TEST_PER_CLASS", 2)
    return cifar.generate_synthetic_cifar(30, 20, seed=9)


def test_missing_data_dir_is_one_clear_line(tmp_path):
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("cifar10", cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("CIFAR-10 is not available offline: data_dir is not set")
    assert "cifar-10-batches-py" in msg and "cifar10-synthetic" in msg and "slperf data fetch cifar10" in msg
    with pytest.raises(DatasetUnavailable, match="data_dir .* does not hold cifar-10-batches-py.*cifar10-synthetic"):
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_user_batches_load_through_the_registry(small_cifar, tmp_path):
    a = small_cifar
    _write_batches(tmp_path / "data" / "cifar10" / "cifar-10-batches-py", a.train_x, a.train_y, a.test_x, a.test_y)
    cache = tmp_path / "cache"
    ds = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=cache)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(ds.arrays, key), getattr(a, key)), key
    assert ds.spec.augment == "crop_flip" and ds.spec.mean == (0.4914, 0.4822, 0.4465)
    again = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=cache)
    assert again.source.startswith("cache ") and "cifar10-local-" in again.source


def test_fetched_folder_is_found_without_data_dir(small_cifar, tmp_path):
    a = small_cifar
    cache = tmp_path / "cache"
    _write_batches(cache / "downloads" / "cifar10" / "cifar-10-batches-py", a.train_x, a.train_y, a.test_x, a.test_y)
    ds = load_dataset("cifar10", cache_dir=cache)
    assert np.array_equal(ds.arrays.test_y, a.test_y)


def test_wrong_counts_are_refused(small_cifar, tmp_path):
    a = small_cifar
    y = a.train_y.copy()
    y[0] = (y[0] + 1) % 10
    _write_batches(tmp_path / "d", a.train_x, y, a.test_x, a.test_y)
    with pytest.raises(DatasetCorrupt, match="train label counts .* are not 3 per class"):
        load_dataset("cifar10", data_dir=tmp_path / "d", cache_dir=tmp_path / "cache")


# ---- cifar10-synthetic -----------------------------------------------------------------------------------------


def test_synthetic_is_labelled_as_synthetic():
    spec = DATASETS["cifar10-synthetic"]
    assert spec.synthetic and "SYNTHETIC" in spec.summary and "NOT CIFAR-10" in spec.description
    assert "synthetic" in spec.name and spec.input_shape == (3, 32, 32) and spec.num_classes == 10
    assert not DATASETS["cifar10"].synthetic and "SYNTHETIC" not in DATASETS["cifar10"].summary
    with pytest.raises(DatasetUnavailable, match="generated and reads no files"):
        load_dataset("cifar10-synthetic", data_dir="/nonexistent", cache_dir="/nonexistent-cache")


def test_synthetic_shapes_balance_and_seeding():
    a = cifar.generate_synthetic_cifar(2000, 500)
    assert a.train_x.shape == (2000, 3, 32, 32) and a.train_x.dtype == np.uint8 and a.test_x.shape == (500, 3, 32, 32)
    assert np.bincount(a.train_y).tolist() == [200] * 10 and np.bincount(a.test_y).tolist() == [50] * 10
    b = cifar.generate_synthetic_cifar(2000, 500)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    c = cifar.generate_synthetic_cifar(2000, 500, seed=1)
    assert not np.array_equal(a.train_x, c.train_x)
    assert not np.array_equal(a.train_x[:500], a.test_x), "train and test are different draws"
    x = a.train_x.astype(np.float32) / 255
    assert np.allclose(x.mean(axis=(0, 2, 3)), cifar.MEAN, atol=0.05)
    assert np.allclose(x.std(axis=(0, 2, 3)), cifar.STD, atol=0.05)
    with pytest.raises(ValueError, match="multiples of 10"):
        cifar.generate_synthetic_cifar(15, 10)


def _features(x: np.ndarray) -> np.ndarray:
    """Columns 0-2: per-channel means (colour); 3-4: grey-level mean |d/dx|, |d/dy| (stripe orientation only);
    5-10: per-channel mean |d/dx|, |d/dy| (orientation and colour together)."""
    x = x.astype(np.float32) / 255
    grey = x.mean(axis=1)
    return np.concatenate(
        [
            x.mean(axis=(2, 3)),
            np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))[:, None],
            np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2))[:, None],
            np.abs(np.diff(x, axis=3)).mean(axis=(2, 3)),
            np.abs(np.diff(x, axis=2)).mean(axis=(2, 3)),
        ],
        axis=1,
    )


def test_synthetic_classes_are_learnable_but_need_colour_and_texture():
    a = cifar.generate_synthetic_cifar(3000, 1000)
    ftr, fte = _features(a.train_x), _features(a.test_x)
    mu, sd = ftr.mean(0), ftr.std(0)
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd

    def nearest_centroid(cols):
        cent = np.stack([ftr[a.train_y == c][:, cols].mean(0) for c in range(10)])
        pred = np.argmin(((fte[:, None, cols] - cent[None]) ** 2).sum(-1), axis=1)
        return float((pred == a.test_y).mean())

    both = nearest_centroid([0, 1, 2, 5, 6, 7, 8, 9, 10])
    colour, texture = nearest_centroid([0, 1, 2]), nearest_centroid([3, 4])
    assert both > 0.8, both  # chance is 0.1
    assert colour < 0.6 and texture < 0.35, (colour, texture)  # either alone falls far short


# ---- augmentation --------------------------------------------------------------------------------------------


def _tiny_cifar() -> LoadedDataset:
    return LoadedDataset(DATASETS["cifar10-synthetic"], cifar.generate_synthetic_cifar(100, 20, seed=3), source="test")


def test_random_crop_flip_geometry():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32) + 1
    same = torch.full((2, 2), CROP_PAD)
    assert torch.equal(random_crop_flip(x, same, torch.tensor([False, False])), x)
    assert torch.equal(random_crop_flip(x, same, torch.tensor([True, False]))[0], x[0].flip(-1))
    shifted = random_crop_flip(x, torch.tensor([[0, 0], [8, 8]]), torch.tensor([False, False]))
    assert torch.all(shifted[0, :, :4, :] == 0) and torch.all(shifted[0, :, :, :4] == 0)
    assert torch.equal(shifted[0, :, 4:, 4:], x[0, :, :28, :28])
    assert torch.equal(shifted[1, :, :28, :28], x[1, :, 4:, 4:]) and torch.all(shifted[1, :, 28:, :] == 0)
    u8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert random_crop_flip(u8, same, torch.tensor([True, True])).dtype == torch.uint8


def test_train_loader_augments_reproducibly_and_test_loader_does_not():
    ds = _tiny_cifar()
    idx = np.arange(100)
    aug = ShardLoader(ds, idx, batch_size=32, seed=4, client_index=1)
    assert aug.augmentation == "crop_flip"
    plain = ShardLoader(ds, idx, batch_size=32, seed=4, client_index=1, augment=False)
    xa = torch.cat([x for x, _ in aug.batches(0)])
    xp = torch.cat([x for x, _ in plain.batches(0)])
    ya = torch.cat([y for _, y in aug.batches(0)])
    assert torch.equal(ya, torch.cat([y for _, y in plain.batches(0)])), "labels and order are unchanged"
    assert not torch.equal(xa, xp)
    # exactly the documented transform: crop + flip of the raw pixels, then normalisation
    offsets, flips = aug.augment_params(0)
    raw = torch.from_numpy(np.asarray(ds.arrays.train_x)[aug.order(0)])
    want = random_crop_flip(raw, torch.from_numpy(offsets), torch.from_numpy(flips)).float() / 255
    mean = torch.tensor(cifar.MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(cifar.STD).reshape(1, 3, 1, 1)
    torch.testing.assert_close(xa, (want - mean) / std)
    assert 0.35 < flips.mean() < 0.65 and offsets.min() == 0 and offsets.max() == 2 * CROP_PAD
    # seeded per epoch: the same again for a reference run, different in the next epoch
    again = ShardLoader(ds, idx, batch_size=32, seed=4, client_index=1)
    assert torch.equal(torch.cat([x for x, _ in again.batches(0)]), xa)
    assert not np.array_equal(aug.augment_params(1)[0], offsets)
    # evaluation: no augmentation
    test = ShardLoader(ds, None, batch_size=20, seed=4, client_index=1, train=False)
    assert test.augmentation is None
    xt, _ = next(test.batches(0, shuffle=False))
    torch.testing.assert_close(xt, (torch.from_numpy(np.asarray(ds.arrays.test_x)).float() / 255 - mean) / std)


def test_mnist_style_sets_are_not_augmented():
    for name in ("mnist", "fashionmnist", "adult", "german"):
        assert DATASETS[name].augment is None, name
