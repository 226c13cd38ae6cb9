"""Atomic checkpoints: the previous checkpoint survives a crash during the write.

Written with ``torch.save`` to a temporary file in the same folder, fsynced, then renamed over the old one
(rename is atomic on POSIX), and the folder fsynced so the rename itself is durable. Read back only with
``torch.load(weights_only=True)``: a checkpoint file is input like any other and must not run code.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise ValueError(f"checkpoint {path} cannot be read safely: {type(exc).__name__}: {exc}") from None
