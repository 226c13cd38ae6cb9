"""Atomic checkpoints: the previous checkpoint survives a crash during the write.

Written with ``torch.save`` to a temporary file in the same folder, fsynced, then renamed over the old one
(rename is atomic on POSIX), and the folder fsynced so the rename itself is durable. Read back only with
``torch.load(weights_only=True)``: a checkpoint file is input like any other and must not run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from slperf.common.fsutil import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle), mode=0o600)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(Path(path), map_location="cpu", weights_only=True)
        return state
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise ValueError(f"checkpoint {path} cannot be read safely: {type(exc).__name__}: {exc}") from None
