"""The array cache's file writing: installed downloads and cached arrays are complete, public (0644) files."""

from __future__ import annotations

import os
import stat

import numpy as np

from slperf.common.data import cache


def test_install_file_writes_a_public_copy_and_leaves_no_temporary_file(tmp_path):
    source = tmp_path / "download.part"
    source.write_bytes(os.urandom((3 << 20) + 5))  # more than one copy block
    dest = tmp_path / "artifacts" / "thing.whl"
    old = os.umask(0o077)
    try:
        cache.install_file(source, dest)
    finally:
        os.umask(old)
    assert dest.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert sorted(p.name for p in dest.parent.iterdir()) == ["thing.whl"]


def test_saved_arrays_map_back_read_only(tmp_path):
    arrays = {"train_x": np.arange(6, dtype=np.uint8).reshape(2, 3), "train_y": np.array([0, 1], dtype=np.int64)}
    folder = cache.save_arrays(tmp_path, "k", arrays, source="test")
    assert stat.S_IMODE((folder / "meta.json").stat().st_mode) == 0o644
    loaded, source = cache.load_arrays(tmp_path, "k", ("train_x", "train_y"))
    assert source == "test" and not loaded["train_x"].flags.writeable
    assert all(np.array_equal(loaded[k], v) for k, v in arrays.items())
