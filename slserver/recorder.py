"""A run's metrics: the record of every round and the run's summary, from running totals kept in memory.

The coordinator drives each round and hands the recorder what it saw: the clients' byte counters, read
when the round starts, when training is done and after evaluation (a ``RoundMeter``), and what the
paradigm returned. The recorder turns that into the round's record (one line of ``metrics.jsonl``) and,
at the end, into the run's summary (``summary.json``). A resumed run seeds it with the records it kept, so
its running totals are exactly those of the run it continues.

It does no I/O: the coordinator writes what it produces to the run folder. Records stay plain mappings
because they are the file format: the same keys go to ``metrics.jsonl``, to watchers and to the plots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from slperf.common.config import RunConfig
from slperf.common.paradigms.base import Disagreement, EvalResult, RoundResult

Record = dict[str, Any]
# A client's bytes (up, down) over all its sessions so far; a reconnect must not reset them.
ClientBytes = Callable[[str], tuple[int, int]]
Clock = Callable[[], float]


@dataclass
class ClientTotals:
    """One client's figures over the whole run: the summary's ``per_client`` entry, in its key order."""

    bytes_up: int = 0
    bytes_down: int = 0
    train_bytes_up: int = 0
    train_bytes_down: int = 0
    samples: int = 0

    def add(self, figures: Mapping[str, Any]) -> None:
        """Accounts one round's figures of this client; evaluation bytes count on the wire, not in training."""
        self.bytes_up += figures["bytes_up"] + figures["eval_bytes_up"]
        self.bytes_down += figures["bytes_down"] + figures["eval_bytes_down"]
        self.train_bytes_up += figures["bytes_up"]
        self.train_bytes_down += figures["bytes_down"]
        self.samples += figures["samples"]


class RoundMeter:
    """The clock and byte counters of one round, read when it starts and again when training is done.

    Reading the counters between training and evaluation is what splits a round's bytes into training and
    evaluation bytes, so the coordinator calls ``training_done`` exactly there.
    """

    def __init__(self, round: int, client_ids: Sequence[str], client_bytes: ClientBytes, clock: Clock):
        self.round = round
        self.client_ids = list(client_ids)
        self._client_bytes = client_bytes
        self.started = clock()
        self.before = self.read()
        self.after_training: dict[str, tuple[int, int]] | None = None

    def read(self) -> dict[str, tuple[int, int]]:
        return {cid: self._client_bytes(cid) for cid in self.client_ids}

    def training_done(self) -> None:
        self.after_training = self.read()


class RunRecorder:
    """Turns what each round did into its record, and the records into the run's summary."""

    def __init__(
        self,
        run_id: str,
        config: RunConfig,
        client_bytes: ClientBytes,
        *,
        started: float,
        records: Sequence[Record] = (),
        elapsed_before: float = 0.0,
        clock: Clock = time.monotonic,
    ):
        """``started`` is the clock reading when this server began the run; ``records`` and ``elapsed_before``
        are what a resumed run kept of the rounds (and the wall time) before its checkpoint."""
        self.run_id = run_id
        self.config = config
        self._client_bytes = client_bytes
        self._clock = clock
        self._started = started
        self._elapsed_before = elapsed_before
        self._records: list[Record] = []
        # Running totals: what the last record says crossed the wire so far, and each client's figures.
        self._bytes_up = 0
        self._bytes_down = 0
        self._per_client: dict[str, ClientTotals] = {}
        for record in records:
            self._account(record)

    @property
    def records(self) -> Sequence[Record]:
        """Every round's record so far, those kept from before a resume included."""
        return self._records

    def elapsed(self) -> float:
        """Wall seconds of the run so far, across server restarts (what a checkpoint carries on)."""
        return self._clock() - self._started + self._elapsed_before

    def start_round(self, round: int, client_ids: Sequence[str]) -> RoundMeter:
        return RoundMeter(round, client_ids, self._client_bytes, self._clock)

    def finish_round(
        self,
        meter: RoundMeter,
        result: RoundResult,
        evaluation: EvalResult,
        disagreements: Sequence[Disagreement] = (),
    ) -> Record:
        """The round's record (also added to the running totals); call after the paradigm evaluated.
        ``disagreements``: the client figures the server bounded this round (the client handles'), besides the
        evaluation's own."""
        if meter.after_training is None:
            raise RuntimeError(f"round {meter.round}: training_done() was not called before the evaluation")
        before, trained, after = meter.before, meter.after_training, meter.read()
        per_client: dict[str, dict[str, Any]] = {}
        for cid in meter.client_ids:
            summary = result.per_client.get(cid)
            per_client[cid] = {
                "bytes_up": trained[cid][0] - before[cid][0],
                "bytes_down": trained[cid][1] - before[cid][1],
                "eval_bytes_up": after[cid][0] - trained[cid][0],
                "eval_bytes_down": after[cid][1] - trained[cid][1],
                "samples": summary.samples if summary else 0,
                "train_loss": summary.mean_loss if summary else None,
                "train_accuracy": summary.accuracy if summary else None,
            }
        # Back after sitting out the round before (a daemon restarted, a link restored): the server's view of a
        # rejoin, beside ``dropped``, so the run folder says in which round a lost client came back.
        sat_out = set(self._records[-1]["dropped"]) if self._records else set()
        rejoined = [cid for cid in result.participants if cid in sat_out and cid not in result.dropped]
        up = self._bytes_up + sum(f["bytes_up"] + f["eval_bytes_up"] for f in per_client.values())
        down = self._bytes_down + sum(f["bytes_down"] + f["eval_bytes_down"] for f in per_client.values())
        record: Record = {
            "round": meter.round,
            "test_accuracy": evaluation.accuracy,
            "test_loss": evaluation.loss,
            "test_samples": evaluation.samples,
            "train_loss": result.train_loss,
            "train_accuracy": result.train_accuracy,
            "participants": result.participants,
            "dropped": result.dropped,
            "rejoined": rejoined,
            "round_seconds": self._clock() - meter.started,
            "wall_seconds": self._clock() - (self._started - self._elapsed_before),
            "bytes_up": up,
            "bytes_down": down,
            "per_client": per_client,
            # Integrity: who was dropped for what it sent, which reported figures the server did not take, and
            # whether the test figures are the server's own or only the clients' (bounded, cross-checked) word.
            "misbehaved": _misbehaved(result.misbehaved, evaluation.misbehaved),
            "disagreements": [d.as_record() for d in (*disagreements, *evaluation.disagreements)],
            "test_accuracy_source": evaluation.source,
            **({"extra": result.extra} if result.extra else {}),
            **({"eval_extra": evaluation.extra} if evaluation.extra else {}),
        }
        self._account(record)
        return record

    def _account(self, record: Record) -> None:
        """Adds a finished round to the totals: the only place they change, for new and resumed rounds alike."""
        self._records.append(record)
        self._bytes_up, self._bytes_down = record["bytes_up"], record["bytes_down"]
        for cid, figures in record["per_client"].items():
            self._per_client.setdefault(cid, ClientTotals()).add(figures)

    @property
    def degraded_reasons(self) -> list[str]:
        """Why the run's results are not those of honest participants alone (empty: they are): every client
        dropped for what it sent and every reported figure the server bounded, by round."""
        reasons: list[str] = []
        for record in self._records:
            for cid, why in sorted(record.get("misbehaved", {}).items()):
                reasons.append(f"round {record['round']}: client {cid} dropped: {why}")
            for d in record.get("disagreements", []):
                reasons.append(
                    f"round {record['round']}: client {d['client']} reported {d['figure']} = {d['claimed']}, "
                    f"the server used {d['counted']}"
                )
        return reasons

    def summary(self) -> dict[str, Any]:
        """The run's summary as ``summary.json`` holds it (the paradigm adds its own facts to it)."""
        config = self.config
        per_client = {cid: asdict(totals) for cid, totals in self._per_client.items()}
        accuracies = [r["test_accuracy"] for r in self._records]
        return {
            "run_id": self.run_id,
            "paradigm": config.paradigm,
            "dataset": config.dataset,
            "model": config.model,
            "split_layer": config.split_layer,
            "clients": config.clients,
            "client_ids": sorted(per_client),
            "partition_method": config.partition_method,
            "rounds": len(self._records),
            "test_accuracy": accuracies[-1] if accuracies else None,
            "best_test_accuracy": max(accuracies) if accuracies else None,
            "test_accuracy_source": self._records[-1].get("test_accuracy_source", "server") if self._records else None,
            "degraded": bool(self.degraded_reasons),
            "degraded_reasons": self.degraded_reasons,
            "wall_seconds": self.elapsed(),
            "bytes_up": sum(c.bytes_up for c in self._per_client.values()),
            "bytes_down": sum(c.bytes_down for c in self._per_client.values()),
            "train_bytes_up": sum(c.train_bytes_up for c in self._per_client.values()),
            "train_bytes_down": sum(c.train_bytes_down for c in self._per_client.values()),
            "per_client": per_client,
        }


def _misbehaved(training: Mapping[str, str], evaluation: Mapping[str, str]) -> dict[str, str]:
    """The round's clients dropped for what they sent, by id: in training, and skipped from the evaluation (its
    reason marked so); a client that did both keeps both reasons."""
    out = dict(training)
    for cid, why in evaluation.items():
        out[cid] = f"{out[cid]}; evaluation: {why}" if cid in out else f"evaluation: {why}"
    return out
