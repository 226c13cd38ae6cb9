"""The run folder's TensorBoard events, read back with TensorBoard's own EventAccumulator: every round's scalars
equal its ``metrics.jsonl`` record, per client too, a value a paradigm did not report is left out, and a resumed run's
event file purges the rounds after its checkpoint so that no round shows twice."""

from __future__ import annotations

from typing import Any

from slperf.slserver.tensorboard_log import TensorBoardLog, read_events, scalars_of


def _record(round: int, accuracy: float, *, train_loss: float | None = 0.5) -> dict[str, Any]:
    return {
        "round": round,
        "test_accuracy": accuracy,
        "test_loss": 1.0 / (round + 1),
        "train_loss": train_loss,
        "train_accuracy": None,
        "bytes_up": 1000 * (round + 1),
        "bytes_down": 500 * (round + 1),
        "round_seconds": 0.25,
        "wall_seconds": 0.25 * (round + 1),
        "per_client": {
            "c1": {
                "bytes_up": 400,
                "bytes_down": 200,
                "eval_bytes_up": 10,
                "eval_bytes_down": 20,
                "samples": 64,
                "train_loss": 0.4,
                "train_accuracy": None,
            },
        },
    }


def expected(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for record in records:
        for tag, value in scalars_of(record).items():
            out.setdefault(tag, {})[record["round"]] = value
    return out


def test_every_round_is_read_back_as_its_record_says(tmp_path):
    records = [_record(0, 0.5), _record(1, 0.75, train_loss=None)]
    log = TensorBoardLog(tmp_path)
    for record in records:
        log.write_round(record)
    log.close()
    events = read_events(tmp_path)
    assert events["test/accuracy"] == {0: 0.5, 1: 0.75}
    assert events["bytes/up"] == {0: 1000.0, 1: 2000.0}
    assert events["train/loss"] == {0: 0.5}  # round 1 reported none: left out, not 0
    assert "train/accuracy" not in events and "client/c1/train_accuracy" not in events
    assert events["client/c1/eval_bytes_down"] == {0: 20.0, 1: 20.0}
    assert events == expected(records)


def test_a_resumed_run_purges_the_rounds_after_its_checkpoint(tmp_path):
    before = TensorBoardLog(tmp_path)
    for record in (_record(0, 0.1), _record(1, 0.2), _record(2, 0.3)):  # round 2 came after the last checkpoint
        before.write_round(record)
    before.close()
    resumed = TensorBoardLog(tmp_path, first_round=2)
    resumed.write_round(_record(2, 0.9))
    resumed.close()
    assert read_events(tmp_path)["test/accuracy"] == {0: 0.1, 1: 0.2, 2: 0.9}
