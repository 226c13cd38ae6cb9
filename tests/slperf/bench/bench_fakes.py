"""Shared by the benchmark tests: a suite mapping to vary, and a fake cell runner with made-up but consistent
figures (so the suite loop, rows, estimates and report can be tested without starting a federation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slperf.bench.rows import finalize_row
from slperf.bench.suite import CENTRALIZED, Cell, Suite, expand, parse_suite


def suite_dict(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "t",
        "base": {
            "model": "lenet",
            "epochs": 2,
            "batch_size": 32,
            "lr": 0.05,
            "max_train_samples": 300,
            "max_test_samples": 100,
        },
        "matrix": {
            "paradigms": ["vanilla", "splitfed_v1"],
            "datasets": ["mnist"],
            "partitions": ["homo", "hetero:0.5"],
            "clients": [2, 3],
            "seeds": [0, 1],
        },
        "target_accuracy": 0.5,
    }
    raw.update(overrides)
    return raw


class FakeRunner:
    def __init__(self, fail: set[str] | None = None):
        self.calls: list[str] = []
        self.fail = fail or set()

    def __call__(self, cell: Cell, work_dir: Path) -> dict[str, Any]:
        self.calls.append(cell.key)
        if cell.key in self.fail:
            raise RuntimeError("boom")
        rounds = cell.epochs
        good = 0.2 if cell.paradigm == "vanilla" else 0.3
        curve = [
            {
                "round": r + 1,
                "test_accuracy": min(0.99, good * (r + 1)),
                "bytes": 0 if cell.paradigm == CENTRALIZED else 1_000_000 * (r + 1),
                "round_seconds": 1.0,
                "seconds": float(r + 1),
            }
            for r in range(rounds)
        ]
        clients = cell.clients or 1
        return {
            "curve": curve,
            "bytes_up": 0 if cell.paradigm == CENTRALIZED else 600_000 * rounds * clients,
            "bytes_down": 0 if cell.paradigm == CENTRALIZED else 400_000 * rounds * clients,
            "total_seconds": 2.0 + rounds,
            "peak_rss_server_mb": None if cell.paradigm == CENTRALIZED else 300.0,
            "peak_rss_client_max_mb": 250.0,
        }


def small_suite(**overrides: Any) -> Suite:
    return parse_suite(
        suite_dict(
            matrix={
                "paradigms": ["vanilla", "splitfed_v1"],
                "datasets": ["mnist"],
                "partitions": ["homo"],
                "clients": [2],
                "seeds": [0],
            },
            **overrides,
        )
    )


def fake_rows(tmp_path: Path) -> tuple[Suite, list[Cell], list[dict[str, Any]]]:
    suite = parse_suite(
        suite_dict(
            matrix={
                "paradigms": ["vanilla", "splitfed_v1"],
                "datasets": ["mnist"],
                "partitions": ["homo", "hetero:0.5"],
                "clients": [2],
                "seeds": [0, 1],
            }
        )
    )
    cells = expand(suite)
    runner = FakeRunner()
    return suite, cells, [finalize_row(c, runner(c, tmp_path), target=suite.target_for(c.dataset)) for c in cells]
