"""Durable file replacement, in one place for every writer in the project (keys, run folders, caches,
checkpoints, benchmark results).

A reader must never see a half-written file, and a file reported written must survive a power cut: so
the data goes to a temporary file beside the target, is flushed and fsynced, renamed over the target, and
the directory entry is fsynced too. The temporary file is created with its final mode, so a private key is
never readable by anyone else, not even for an instant.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Writer, mode: int = 0o644) -> None:
    """Replaces ``path`` with ``data`` (bytes, text as UTF-8, or a function that writes to a binary file).

    ``mode`` is applied to the new file whatever the umask: a public file (any group/other bit set) stays
    readable by the services that need it, a 0600 key is created 0600.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
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
