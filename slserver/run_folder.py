"""The run folder the server's coordinator writes for every run: the resolved config, per-round metrics
(appended and fsynced as rounds finish, so a crash loses at most the round in flight), run state, the summary
and plots. It lives with the server because only the server writes it; readers (tests, benchmarks) open the
same folder afterwards."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from slperf.common.fsutil import atomic_write


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

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.path / "state.json", json.dumps(state, sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

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
