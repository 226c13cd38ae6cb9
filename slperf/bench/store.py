"""The benchmark's results store: ``results.jsonl`` in the results folder, one row per finished cell.

Rows are appended and fsynced as cells finish, so an interrupted suite keeps every finished cell and the next
run resumes; a key may appear more than once (a failed cell run again) and the last row wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ResultsStore:
    """results.jsonl in the output folder: rows appended as cells finish, the last row of a key wins."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / "results.jsonl"

    def load(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return rows
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that cell simply runs again
            if isinstance(row, dict) and "key" in row:
                rows[row["key"]] = row
        return rows

    def append(self, row: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
