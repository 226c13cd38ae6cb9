"""The array cache's file writing: cached arrays are complete, public (0644) files."""

from __future__ import annotations

import stat

import numpy as np

from slperf.common.data import cache


def test_saved_arrays_map_back_read_only(tmp_path):
    arrays = {"train_x": np.arange(6, dtype=np.uint8).reshape(2, 3), "train_y": np.array([0, 1], dtype=np.int64)}
    folder = cache.save_arrays(tmp_path, "k", arrays, source="test")
    assert stat.S_IMODE((folder / "meta.json").stat().st_mode) == 0o644
    loaded, source = cache.load_arrays(tmp_path, "k", ("train_x", "train_y"))
    assert source == "test" and not loaded["train_x"].flags.writeable
    assert all(np.array_equal(loaded[k], v) for k, v in arrays.items())
