"""TensorBoard event files in every run folder, so that ``tensorboard --logdir runs`` shows every run the server ran.

Each round's record (the same one ``metrics.jsonl`` gets) becomes scalars at step = the round: the run's test and
training figures, the bytes on the wire so far, the round's seconds, and each client's figures of the round under
``client/<id>/``. Values a paradigm does not report (None) are left out, never written as 0.

A resumed run opens a new event file in the same folder with ``purge_step`` at its first round, which tells
TensorBoard to drop what the earlier files hold from that round on (records after the last checkpoint are dropped
from ``metrics.jsonl`` too), so no round shows twice. Writing goes through ``SummaryWriter``'s own writer thread;
opening, flushing and closing touch the disk, so the coordinator calls them off the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Run scalars: tag -> the record's key.
RUN_SCALARS = {
    "test/accuracy": "test_accuracy",
    "test/loss": "test_loss",
    "train/accuracy": "train_accuracy",
    "train/loss": "train_loss",
    "bytes/up": "bytes_up",
    "bytes/down": "bytes_down",
    "time/round_seconds": "round_seconds",
    "time/wall_seconds": "wall_seconds",
}
# Per-client scalars of a round, under client/<id>/<key>.
CLIENT_SCALARS = (
    "bytes_up",
    "bytes_down",
    "eval_bytes_up",
    "eval_bytes_down",
    "samples",
    "train_loss",
    "train_accuracy",
)


def scalars_of(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars one round's record becomes, by tag (what the event file holds at step = the round)."""
    values: dict[str, Any] = {tag: record.get(key) for tag, key in RUN_SCALARS.items()}
    for client_id, figures in sorted(record.get("per_client", {}).items()):
        for key in CLIENT_SCALARS:
            values[f"client/{client_id}/{key}"] = figures.get(key)
    return {tag: float(v) for tag, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLog:
    """The event file writer of one run folder."""

    def __init__(self, folder: Path, first_round: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(folder), purge_step=first_round if first_round else None)

    def write_round(self, record: Mapping[str, Any]) -> None:
        """Adds the round's scalars and flushes them to disk, so a live ``tensorboard`` sees the round."""
        step = int(record["round"])
        for tag, value in scalars_of(record).items():
            # A tensor summary in float64: byte counts pass 2**24 early, which a classic float32 scalar would round.
            self._writer.add_scalar(tag, value, global_step=step, new_style=True, double_precision=True)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_events(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar in ``folder``'s event files, by tag and round, as TensorBoard shows them (later files purging
    earlier ones' rounds); for tests and for reading a run's curves without TensorBoard's UI."""
    # tensorboard ships no type hints.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # type: ignore[import-untyped]
    from tensorboard.util.tensor_util import make_ndarray  # type: ignore[import-untyped]

    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {
        tag: {event.step: float(make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)}
        for tag in accumulator.Tags()["tensors"]
    }
