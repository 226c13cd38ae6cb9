"""The client daemon's training state on disk, so that a restarted daemon (or one whose server restarted and
rewound to its last checkpoint) resumes a run exactly: momentum buffers, its own segments, torch's RNG.

Layout: ``<state-dir>/runs/<run_id>/<client_id>/round-<r>.safetensors``, the state *entering* round ``r`` (after
``r`` training passes), one safetensors file each, written atomically (mode 0600), tensors only; the set-up it
belongs to (run id, a hash of the config, client index and count), the round and the paradigm's JSON hyper-state
are the file's safetensors metadata. Only the two latest rounds are kept: the server checkpoints after every
round, so it can rewind a client by at most one round. A run's round states are removed when the run ends.

What a finished run leaves for split inference stays in the same folder: ``final.safetensors`` (this client's
segments as the run's final evaluation used them, tensors ``<segment>/<parameter>``) and ``final.json`` (the run's
config, the model's facts and each segment's block range, see ``slperf.common.paradigms.kit.inference``), kept
until the user deletes them; ``slperf predict`` and ``slperf export`` read them.

Never pickle: a state file is input like any other. An unreadable file, or one of another set-up, is logged and
ignored (the client starts afresh), never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from slperf.common.fsutil import atomic_write
from slperf.common.paradigms.base import TrainingState
from slperf.common.security.ids import valid_run_id

log = logging.getLogger("slperf.client")

FORMAT = "slperf-client-state/1"
FINAL_FORMAT = "slperf-client-final/1"
FINAL_WEIGHTS = "final.safetensors"
FINAL_LAYOUT = "final.json"
KEEP = 2
RNG_TENSOR = "rng/torch_cpu"
_FILE = re.compile(r"round-(\d+)\.safetensors")


def default_state_dir() -> Path:
    """``$SLPERF_STATE``, else ``$XDG_STATE_HOME/slperf``, else ``~/.local/state/slperf``."""
    if os.environ.get("SLPERF_STATE"):
        return Path(os.environ["SLPERF_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "slperf"


@dataclass(frozen=True)
class SetupKey:
    """What a saved state belongs to: the same run, set up with the same config for the same client slot."""

    run_id: str
    config_json: str
    client_index: int
    num_clients: int

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256(self.config_json.encode("utf-8")).hexdigest()
        return {
            "run_id": self.run_id,
            "config_sha256": digest,
            "client_index": self.client_index,
            "num_clients": self.num_clients,
        }


@dataclass
class Snapshot:
    """The state entering round ``round``, and torch's CPU RNG state then (dropout draws from it)."""

    round: int
    state: TrainingState
    rng: torch.Tensor | None = None


class StateStore:
    def __init__(self, root: Path, client_id: str):
        self.root = Path(root)
        self.client_id = client_id

    def folder(self, run_id: str) -> Path:
        if not valid_run_id(run_id):  # the id names a folder: never a path of the server's choosing
            raise ValueError(f"invalid run id {run_id!r}")
        return self.root / "runs" / run_id / self.client_id

    def path(self, run_id: str, round: int) -> Path:
        return self.folder(run_id) / f"round-{round}.safetensors"

    def rounds(self, run_id: str) -> list[int]:
        folder = self.folder(run_id)
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for f in folder.iterdir() if (m := _FILE.fullmatch(f.name)))

    def save(self, key: SetupKey, snapshot: Snapshot) -> None:
        tensors = {name: t.contiguous() for name, t in snapshot.state.tensors.items()}
        if snapshot.rng is not None:
            tensors[RNG_TENSOR] = snapshot.rng
        meta = {
            "format": FORMAT,
            "client_id": self.client_id,
            **key.fingerprint(),
            "round": snapshot.round,
            "paradigm": snapshot.state.meta,
        }
        data = save_tensors(tensors, metadata={"slperf": json.dumps(meta)})
        atomic_write(self.path(key.run_id, snapshot.round), data, mode=0o600)
        for old in self.rounds(key.run_id):
            if old < snapshot.round - (KEEP - 1):
                self.path(key.run_id, old).unlink(missing_ok=True)

    def load(self, key: SetupKey, round: int) -> Snapshot | None:
        """The state saved entering ``round`` for this set-up; None (with a log line saying why) when there is
        none, it cannot be read, or it belongs to another set-up."""
        path = self.path(key.run_id, round)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the training state %s (%s); starting afresh", path, exc)
            return None
        try:
            meta = _metadata(data)
            tensors = load_tensors(data)
        except Exception as exc:  # safetensors raises several types for a torn or foreign file
            log.warning("the training state %s is unreadable (%s: %s); starting afresh", path, type(exc).__name__, exc)
            return None
        expected = {"format": FORMAT, "client_id": self.client_id, **key.fingerprint(), "round": round}
        mismatched = sorted(k for k, v in expected.items() if meta.get(k) != v)
        if mismatched or not isinstance(meta.get("paradigm"), dict):
            log.warning(
                "the training state %s belongs to another set-up (%s differ); starting afresh",
                path,
                ", ".join(mismatched) or "paradigm state",
            )
            return None
        rng = tensors.pop(RNG_TENSOR, None)
        return Snapshot(round, TrainingState(tensors, meta["paradigm"]), rng)

    def forget_other_setups(self, key: SetupKey) -> None:
        """Removes this run's saved states that another set-up (another config, client slot) left, so that the
        folder only ever holds states of the current one."""
        for round in self.rounds(key.run_id):
            path = self.path(key.run_id, round)
            try:
                meta = _metadata(path.read_bytes())
            except Exception:  # noqa: BLE001 - unreadable: just as stale
                meta = {}
            if any(meta.get(k) != v for k, v in key.fingerprint().items()):
                log.warning("removing the training state %s: it belongs to another set-up of run %s", path, key.run_id)
                path.unlink(missing_ok=True)

    def discard(self, run_id: str) -> None:
        """The run is over: its states can never be resumed (its final segments, if any, stay)."""
        folder = self.folder(run_id)
        if (folder / FINAL_LAYOUT).exists():
            for round in self.rounds(run_id):
                self.path(run_id, round).unlink(missing_ok=True)
            return
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # the run's folder, when no other client id of this machine uses it
        except OSError:
            pass

    def save_final(self, run_id: str, segments: dict[str, dict[str, torch.Tensor]], layout: dict[str, Any]) -> Path:
        """Keeps the finished run's segments and their layout (see the module docstring); returns the folder."""
        folder = self.folder(run_id)
        tensors = {
            f"{name}/{key}": t.detach().to("cpu").contiguous() for name, s in segments.items() for key, t in s.items()
        }
        record = {"format": FINAL_FORMAT, "run_id": run_id, "client_id": self.client_id, **layout}
        atomic_write(folder / FINAL_WEIGHTS, save_tensors(tensors, metadata={"format": FINAL_FORMAT}), mode=0o600)
        atomic_write(folder / FINAL_LAYOUT, json.dumps(record, indent=2, sort_keys=True) + "\n", mode=0o600)
        return folder

    def load_final(self, run_id: str) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
        """The finished run's layout and segments by name; FileNotFoundError when this client kept none, ValueError
        for files it cannot read."""
        folder = self.folder(run_id)
        try:
            layout = json.loads((folder / FINAL_LAYOUT).read_text())
            flat = load_tensors((folder / FINAL_WEIGHTS).read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"client {self.client_id} kept no final segments of run {run_id} under {self.root} "
                "(not a participant, the run did not finish, or another --state-dir)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - safetensors and json raise several types for a damaged file
            raise ValueError(f"the final segments in {folder} cannot be read: {type(exc).__name__}: {exc}") from None
        if not isinstance(layout, dict) or layout.get("format") != FINAL_FORMAT:
            raise ValueError(f"{folder / FINAL_LAYOUT} is not a {FINAL_FORMAT} file")
        segments: dict[str, dict[str, torch.Tensor]] = {}
        for flat_name, tensor in flat.items():
            name, _, key = flat_name.partition("/")
            segments.setdefault(name, {})[key] = tensor
        return layout, segments


def _metadata(data: bytes) -> dict[str, Any]:
    """The ``slperf`` JSON in a safetensors file's header (8-byte little-endian length, then the JSON header)."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(data[8 : 8 + size])
    meta = json.loads(header.get("__metadata__", {}).get("slperf", "null"))
    if not isinstance(meta, dict):
        raise ValueError("no slperf metadata")
    return meta
