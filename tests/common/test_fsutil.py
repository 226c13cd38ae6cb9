"""The one durable file writer and the one way a finished file is moved into place."""

from __future__ import annotations

import os
import stat

from slperf.common.fsutil import atomic_write, install


def test_install_moves_a_finished_file_into_place_public_and_leaves_nothing_behind(tmp_path):
    data = os.urandom((3 << 20) + 5)
    source = tmp_path / "download.part"
    source.write_bytes(data)
    dest = tmp_path / "artifacts" / "thing.whl"
    old = os.umask(0o077)
    try:
        install(source, dest)
    finally:
        os.umask(old)
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert not source.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["thing.whl"]


def test_atomic_write_keeps_a_key_private_and_replaces_the_old_content(tmp_path):
    key = tmp_path / "keys" / "client.key"
    atomic_write(key, b"old", mode=0o600)
    atomic_write(key, "new", mode=0o600)
    assert key.read_text() == "new" and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in key.parent.iterdir()) == ["client.key"]
