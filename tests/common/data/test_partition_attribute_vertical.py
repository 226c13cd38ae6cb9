"""base_on_attribute and vertical partitions on small arrays, and the label histograms (table, dict, PNG)."""

from __future__ import annotations

import numpy as np
import pytest

from slperf.common.data import class_counts, label_histograms, partition, plot_label_histograms
from slperf.common.data.partition import attribute_value_blocks

RNG = np.random.default_rng(11)
LABELS = RNG.integers(0, 2, size=600).astype(np.int64)
ATTR = RNG.choice([0, 1, 2, 3, 4], size=600, p=[0.1, 0.2, 0.3, 0.25, 0.15]).astype(np.int64)


def _values(shards):
    return [sorted(set(ATTR[s].tolist())) for s in shards]


@pytest.mark.parametrize("num_clients", [1, 2, 3, 5])
def test_clients_up_to_values_get_whole_value_blocks(num_clients):
    shards = partition(LABELS, "base_on_attribute", num_clients, seed=0, attribute=ATTR)
    expected = attribute_value_blocks(list(range(5)), num_clients)
    assert _values(shards) == expected
    for s, block in zip(shards, expected):
        assert np.array_equal(s, np.flatnonzero(np.isin(ATTR, block))), "every row of its values, sorted"
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(600))


@pytest.mark.parametrize("num_clients", [6, 8, 11])
def test_more_clients_than_values_share_values(num_clients):
    shards = partition(LABELS, "base_on_attribute", num_clients, seed=3, attribute=ATTR)
    allidx = np.concatenate(shards)
    assert len(allidx) == len(set(allidx.tolist())) == 600, "disjoint and complete"
    groups = np.array_split(np.arange(num_clients), 5)
    for value, group in enumerate(groups):
        sizes = [shards[c].size for c in group]
        assert all(set(ATTR[shards[c]].tolist()) == {value} for c in group)
        assert sum(sizes) == int((ATTR == value).sum()) and max(sizes) - min(sizes) <= 1


def test_attribute_options():
    codes = ATTR.copy()
    codes[:50] = -1  # rows without a value go to nobody
    shards = partition(LABELS, "base_on_attribute", 2, seed=0, attribute=codes)
    assert sum(s.size for s in shards) == 550 and not np.isin(np.arange(50), np.concatenate(shards)).any()
    eq = partition(LABELS, "base_on_attribute", 3, seed=0, attribute=ATTR, equal_size=True)
    assert len({s.size for s in eq}) == 1
    a = partition(LABELS, "base_on_attribute", 7, seed=1, attribute=ATTR)
    b = partition(LABELS, "base_on_attribute", 7, seed=1, attribute=ATTR)
    c = partition(LABELS, "base_on_attribute", 7, seed=2, attribute=ATTR)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not all(np.array_equal(x, y) for x, y in zip(a, c))
    with pytest.raises(ValueError, match="needs the attribute"):
        partition(LABELS, "base_on_attribute", 2, seed=0)
    with pytest.raises(ValueError, match="one value code per sample"):
        partition(LABELS, "base_on_attribute", 2, seed=0, attribute=ATTR[:-1])
    with pytest.raises(ValueError, match="one value code per sample"):
        partition(LABELS, "base_on_attribute", 2, seed=0, attribute=ATTR.astype(float))


def test_vertical_gives_everyone_every_row():
    shards = partition(LABELS, "vertical", 3, seed=0, data_vertical_list=[6, 4, 4])
    assert len(shards) == 3 and all(np.array_equal(s, np.arange(600)) for s in shards)
    assert class_counts(LABELS, shards).tolist() == [np.bincount(LABELS).tolist()] * 3
    shards[0][0] = 99  # independent arrays
    assert shards[1][0] == 0
    with pytest.raises(ValueError, match="one attribute count per client"):
        partition(LABELS, "vertical", 2, seed=0, data_vertical_list=[6, 4, 4])


def test_label_histograms_table_dict_and_png(tmp_path):
    y = np.repeat(np.arange(3), [5, 7, 9]).astype(np.int64)
    shards = [np.arange(0, 10), np.arange(10, 21)]
    hist = label_histograms(
        y, shards, 3, class_names=["cat", "dog", "a-very-long-class-name"], title="t", notes=["note"]
    )
    assert hist.counts.tolist() == [[5, 5, 0], [0, 2, 9]] and hist.sizes.tolist() == [10, 11]
    d = hist.to_dict()
    assert d["classes"][0] == "cat" and d["clients"][1] == {"client": 1, "samples": 11, "counts": [0, 2, 9]}
    table = hist.table().splitlines()
    assert table[0] == "t" and table[1].split() == ["client", "cat", "dog", "a-very-long.", "total"]
    assert table[2].split() == ["0", "5", "5", "0", "10"] and table[-1] == "note"
    path = plot_label_histograms(hist, tmp_path / "sub" / "hist.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 600 < width < 1400 and height > 150
    default = label_histograms(y, shards)
    assert default.class_names == ("0", "1", "2")
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        label_histograms(y, shards, class_names=["a", "b"])


def test_plot_with_many_clients_and_classes(tmp_path):
    y = np.arange(2000) % 20
    shards = partition(y, "hetero", 12, seed=0, alpha=0.3)
    path = plot_label_histograms(label_histograms(y, shards), tmp_path / "many.png")
    assert path.stat().st_size > 5000
