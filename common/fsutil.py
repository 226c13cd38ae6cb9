"""Durable file replacement, in one place for every writer in the project (keys, run folders, caches,
checkpoints, benchmark results).

A reader must never see a half-written file, and a file reported written must survive a power cut: so
the data goes to a temporary file beside the target, is flushed and fsynced, renamed over the target, and
the directory entry is fsynced too. The temporary file is created with its final mode, so a private key is
never readable by anyone else, not even for an instant.

A process killed mid-write leaves its temporary file behind (a checkpoint's can be hundreds of MB).
``remove_stale_temp_files`` removes those, and only those: the temporary name is made and recognised by
``TempName`` alone, so the writer and the cleaner cannot disagree on what is a temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]


@dataclass(frozen=True)
class TempName:
    """The name ``atomic_write`` gives a file until it is renamed into place: ``.<target>.<pid>.<8 hex>.tmp``,
    hidden, beside its target, and naming the process that writes it (so a cleaner can tell a dead writer's
    leftover from a file being written right now)."""

    target: str
    pid: int
    token: str

    _PATTERN = re.compile(r"\.(?P<target>.+)\.(?P<pid>[0-9]{1,10})\.(?P<token>[0-9a-f]{8})\.tmp")

    @classmethod
    def new(cls, target: str) -> TempName:
        return cls(target, os.getpid(), secrets.token_hex(4))

    @classmethod
    def parse(cls, name: str) -> TempName | None:
        """The temporary name ``name`` is, or None for any other file name."""
        match = cls._PATTERN.fullmatch(name)
        if match is None:
            return None
        return cls(match["target"], int(match["pid"]), match["token"])

    def __str__(self) -> str:
        return f".{self.target}.{self.pid}.{self.token}.tmp"


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Writer, mode: int = 0o644) -> None:
    """Replaces ``path`` with ``data`` (bytes, text as UTF-8, or a function that writes to a binary file).

    ``mode`` is applied to the new file whatever the umask: a public file (any group/other bit set) stays
    readable by the services that need it, a 0600 key is created 0600.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(str(TempName.new(target.name)))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, mode)
    try:
        if mode & 0o077 and hasattr(os, "fchmod"):  # public file: undo the umask; never done for keys
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def install(source: str | os.PathLike[str], path: str | os.PathLike[str], mode: int = 0o644) -> None:
    """Moves a finished file (a verified download) to ``path`` with the same guarantees as ``atomic_write``: the
    file is fsynced under its temporary name, given ``mode``, renamed into place and the rename made durable.
    A rename, not a copy: the file is written once. Across file systems, where no rename can, it is copied."""
    src, target = Path(source), Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb+") as handle:
        os.fsync(handle.fileno())
    os.chmod(src, mode)
    try:
        os.replace(src, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise

        def copy(out: BinaryIO) -> None:
            with open(src, "rb") as inp:
                shutil.copyfileobj(inp, out, 1 << 20)

        atomic_write(target, copy, mode)
        src.unlink()
        return
    _fsync_dir(target.parent)


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Removes from ``folder`` (not below it) the temporary files ``atomic_write`` left when its process died;
    returns what it removed. A file is removed only if its name is a ``TempName``, it is a regular file (not a
    link, not a folder), and its writer is gone: the process named in it no longer exists, or it is this one.
    Call it where this process is not writing into ``folder`` (at start-up): a pid is reused across restarts
    (a container's server is the same pid every time), so this process's own pid counts as a dead writer."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = TempName.parse(entry.name)
        if name is None or not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
            continue
        if name.pid != os.getpid() and _process_exists(name.pid):
            continue  # another process is (or may be) writing it right now
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill there terminates the process whatever the signal: assume a live writer
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:  # e.g. an out-of-range pid, or a platform without signal 0: not a process we can see
        return False
    return True


def _fsync_dir(folder: Path) -> None:
    """Makes the rename itself durable; some file systems (and Windows) cannot open a directory, which is fine."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
