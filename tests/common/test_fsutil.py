"""The one durable file writer and the one way a finished file is moved into place."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from slperf.common.fsutil import TempName, atomic_write, install, remove_stale_temp_files


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


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped), so no process has it for the test's duration."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_temporary_name_atomic_write_uses_is_the_one_the_cleaner_recognises(tmp_path, monkeypatch):
    seen: list[str] = []
    real_open = os.open

    def spying_open(path, flags, mode=0o777):
        seen.append(Path(path).name)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spying_open)
    atomic_write(tmp_path / "checkpoint.pt", b"x")
    monkeypatch.undo()
    name = TempName.parse(seen[0])
    assert name == TempName("checkpoint.pt", os.getpid(), name.token) and str(name) == seen[0]
    for other in ("checkpoint.pt", ".checkpoint.pt.tmp", ".checkpoint.pt.12.abcdefgh.tmp", "notes.12.abcdef01.tmp"):
        assert TempName.parse(other) is None, other


def test_leftovers_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    leftovers = [
        tmp_path / str(TempName("checkpoint.pt", dead, "0123abcd")),
        tmp_path / str(TempName("metrics.jsonl", dead, "89abcdef")),
        tmp_path / str(TempName("config.yaml", os.getpid(), "00000000")),  # this process: not writing now
    ]
    kept = [
        tmp_path / "checkpoint.pt",
        tmp_path / "user-notes.tmp",
        tmp_path / ".checkpoint.pt.backup.tmp",
        tmp_path / str(TempName("state.json", alive, "feedbeef")),  # a live writer's file
    ]
    for path in leftovers + kept:
        path.write_bytes(b"data")
    (tmp_path / str(TempName("a-folder", dead, "00000001"))).mkdir()
    kept.append(tmp_path / str(TempName("a-folder", dead, "00000001")))
    (tmp_path / str(TempName("a-link", dead, "00000002"))).symlink_to(tmp_path / "checkpoint.pt")
    kept.append(tmp_path / str(TempName("a-link", dead, "00000002")))
    deeper = tmp_path / "sub" / str(TempName("checkpoint.pt", dead, "00000003"))
    deeper.parent.mkdir()
    deeper.write_bytes(b"data")
    kept.append(deeper)

    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(leftovers)
    assert all(not p.exists() for p in leftovers)
    assert all(p.exists() or p.is_symlink() for p in kept)
    assert remove_stale_temp_files(tmp_path / "missing") == []
