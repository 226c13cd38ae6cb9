"""The run folder the server's coordinator writes for every run: the resolved config, per-round metrics
(appended and fsynced as rounds finish, so a crash loses at most the round in flight), run state, the summary
and plots. It lives with the server because only the server writes it; readers (tests, benchmarks) open the
same folder afterwards.

``metrics.jsonl`` after a crash: every record is appended with its newline in one write and fsynced, so a
last line without its newline (the server died mid-append, the disk filled, the power went) is a torn tail,
never a record: readers leave it out and ``repair_metrics`` cuts it off. A damaged line anywhere else is
not something a crash does; it is a ``MetricsError`` naming the file and the line, and the file is left as it is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from slperf.common.fsutil import atomic_write

log = logging.getLogger("slperf.server.run")


class MetricsError(ValueError):
    """A line of ``metrics.jsonl`` before its last is not a round's record: the file is damaged, not torn."""


def _parse_metrics(path: Path, data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The records in ``data`` and the length of its torn tail (0 when it ends with a newline)."""
    *lines, tail = data.split(b"\n")
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise MetricsError(f"{path} line {number} is not UTF-8; the file is damaged") from None
        except json.JSONDecodeError as exc:
            raise MetricsError(f"{path} line {number} is not JSON ({exc.msg}); the file is damaged") from None
        if not isinstance(record, dict) or type(record.get("round")) is not int:
            raise MetricsError(f"{path} line {number} is not a round's record (an object with an integer round)")
        records.append(record)
    return records, len(tail)


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=True))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        atomic_write(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    @property
    def queued_path(self) -> Path:
        return self.path / "queued.json"

    def write_queued(self, entry: dict[str, Any]) -> None:
        """Marks the folder as a queued run's (its config and when it was queued), so a restart queues it again."""
        atomic_write(self.queued_path, json.dumps(entry, sort_keys=True) + "\n")

    def read_queued(self) -> dict[str, Any]:
        """The queue entry; FileNotFoundError without one, ValueError for one that is not a JSON object."""
        entry = json.loads(self.queued_path.read_text(encoding="utf-8"))
        if not isinstance(entry, dict):
            raise ValueError(f"{self.queued_path} is not a JSON object")
        return entry

    def clear_queued(self) -> None:
        self.queued_path.unlink(missing_ok=True)

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.path / "state.json", json.dumps(state, sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete record, in order; a torn tail is left out (and left in the file). ``MetricsError`` for
        a damaged line before it."""
        return self._read_metrics()[0]

    def repair_metrics(self) -> list[dict[str, Any]]:
        """Cuts a torn tail off ``metrics.jsonl`` (rewriting it atomically, and saying so in the log) so that the
        next record appended starts on a line of its own; returns the complete records. An intact file is not
        touched; a damaged one raises ``MetricsError`` and is not touched either."""
        records, torn = self._read_metrics()
        if torn:
            self.rewrite_metrics(records)
            log.warning(
                "%s: dropped a torn last line (%d bytes, no newline: cut off by a crash); %d records kept",
                self.metrics_path,
                torn,
                len(records),
            )
        return records

    def _read_metrics(self) -> tuple[list[dict[str, Any]], int]:
        try:
            data = self.metrics_path.read_bytes()
        except FileNotFoundError:
            return [], 0
        return _parse_metrics(self.metrics_path, data)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.path / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")

    def write_plots(self, records: Iterable[dict[str, Any]], title: str) -> list[Path]:
        """accuracy vs round, vs bytes on the wire (MB), vs wall time (s)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = [r for r in records if r.get("test_accuracy") is not None]
        if not records:
            return []
        acc = [100 * r["test_accuracy"] for r in records]
        axes = {
            "accuracy_vs_round.png": ([r["round"] + 1 for r in records], "round"),
            "accuracy_vs_bytes.png": (
                [(r["bytes_up"] + r["bytes_down"]) / 1e6 for r in records],
                "bytes on the wire, up + down (MB)",
            ),
            "accuracy_vs_time.png": ([r["wall_seconds"] for r in records], "wall time (s)"),
        }
        written = []
        for name, (xs, label) in axes.items():
            fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
            ax.plot(xs, acc, marker="o")
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            fig.tight_layout()
            fig.savefig(self.path / name)
            plt.close(fig)
            written.append(self.path / name)
        return written
