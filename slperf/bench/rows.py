"""Results rows: one flat mapping per cell (identity, config, measured figures and the per-round curve), the
form that the store, the CSV and the report all read. A row is built the same way whoever measured the cell
(a real federation, the centralized baseline, or a test's fake runner).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slperf.bench import privacy
from slperf.bench.suite import Cell, attack_label


def rounds_to_target(curve: Sequence[Mapping[str, Any]], target: float | None) -> int | None:
    """The first (1-based) round whose test accuracy reaches the target, None if none does."""
    if target is None:
        return None
    for i, point in enumerate(curve):
        acc = point.get("test_accuracy")
        if acc is not None and acc >= target:
            return int(point.get("round", i + 1))
    return None


def seconds_to_target(curve: Sequence[Mapping[str, Any]], target: float | None) -> float | None:
    """Training time (the sum of round times) until the test accuracy first reaches the target, None if never."""
    if target is None:
        return None
    for point in curve:
        acc = point.get("test_accuracy")
        if acc is not None and acc >= target:
            return float(point.get("seconds", 0.0))
    return None


def _link_figures(cell: Cell, measured: Mapping[str, Any]) -> dict[str, Any]:
    """The network columns: the cell's profile, what its links measured (the slowest client's rates, the mean
    round trip through the relays) and the server's busy share of the run's wall time."""
    out: dict[str, Any] = {"network": cell.network or None, "compression": cell.compression or None}
    links = list(measured.get("network_links") or [])
    if links:
        out["link_rate_mbit"] = links[0].get("rate_mbit")
        out["link_delay_ms"] = links[0].get("delay_ms")
        out["link_up_mbit"] = min(float(m["up_mbit"]) for m in links)
        out["link_down_mbit"] = min(float(m["down_mbit"]) for m in links)
        rtts = [float(m["rtt_path_ms"]) for m in links if m.get("rtt_path_ms") is not None]
        out["link_rtt_ms"] = sum(rtts) / len(rtts) if rtts else None
    busy, wall = measured.get("server_compute_seconds"), measured.get("run_seconds")
    if busy is not None and wall:
        out["server_busy_fraction"] = float(busy) / float(wall)
    return out


def finalize_row(cell: Cell, measured: Mapping[str, Any], *, target: float | None) -> dict[str, Any]:
    """A results row: the cell's identity and config plus what the runner measured, with the figures that
    follow from the curve (final/best accuracy, rounds to target) filled in when the runner left them out."""
    curve = list(measured.get("curve") or [])
    accs = [p["test_accuracy"] for p in curve if p.get("test_accuracy") is not None]
    row: dict[str, Any] = {
        "key": cell.key,
        "config_hash": cell.config_hash,
        "status": "ok",
        "error": "",
        "paradigm": cell.paradigm,
        "dataset": cell.dataset,
        "partition": cell.partition.label if cell.partition else "all",
        "partition_method": cell.config.get("partition_method") if cell.partition else None,
        "clients": cell.clients,
        "seed": cell.seed,
        "epochs": cell.config.get("epochs"),
        "batch_size": cell.config.get("batch_size"),
        "lr": cell.config.get("lr"),
        "model": cell.config.get("model"),
        "defense": cell.defense,
        "attacks": attack_label(cell.config["attacks"]) if cell.config.get("attacks") else None,
        "attack_set": attack_label(cell.attack_set) if cell.attack_set is not None else None,
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "target_accuracy": target,
    }
    row.update({k: v for k, v in measured.items() if k not in ("curve",)})
    row.update(privacy.row_figures(measured))
    if row.get("final_accuracy") is None and accs:
        row["final_accuracy"] = accs[-1]
    row["rounds"] = measured.get("rounds", len(curve))
    row["rounds_to_target"] = rounds_to_target(curve, target)
    row["seconds_to_target"] = seconds_to_target(curve, target)
    row.update(_link_figures(cell, measured))
    clients = cell.clients or 1
    for direction in ("up", "down"):
        total = row.get(f"bytes_{direction}")
        if total is not None and row.get(f"bytes_{direction}_per_client") is None:
            row[f"bytes_{direction}_per_client"] = total / clients
    if row.get("train_seconds") is None and curve:
        row["train_seconds"] = sum(float(p.get("round_seconds", 0.0)) for p in curve)
    if row.get("train_seconds") is not None and row["rounds"]:
        row["seconds_per_round"] = float(row["train_seconds"]) / int(row["rounds"])
    row["config"] = dict(cell.config)
    row["curve"] = curve
    return row


def failed_row(cell: Cell, error: str, *, target: float | None) -> dict[str, Any]:
    row = finalize_row(cell, {}, target=target)
    row.update(status="failed", error=error)
    return row


def curve_from_metrics(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-round points from a run's metrics.jsonl: cumulative bytes (up + down) and cumulative round time."""
    out: list[dict[str, Any]] = []
    seconds = 0.0
    for record in sorted(records, key=lambda r: r["round"]):
        seconds += float(record.get("round_seconds", 0.0))
        point: dict[str, Any] = {
            "round": int(record["round"]) + 1,
            "test_accuracy": record.get("test_accuracy"),
            "test_loss": record.get("test_loss"),
            "train_loss": record.get("train_loss"),
            "bytes": int(record.get("bytes_up", 0)) + int(record.get("bytes_down", 0)),
            "bytes_up": int(record.get("bytes_up", 0)),
            "bytes_down": int(record.get("bytes_down", 0)),
            "round_seconds": float(record.get("round_seconds", 0.0)),
            "seconds": seconds,
        }
        figures = privacy.round_figures(record)
        if figures is not None:  # the round's leakage figures, where the run asked for attacks
            point["privacy"] = figures
        out.append(point)
    return out
