"""The run recorder: round records with training and evaluation bytes apart, running totals that survive
a resume exactly, and the summary's figures."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from slperf.common.config import RunConfig
from slperf.common.paradigms.base import EvalResult, RoundResult
from slperf.common.protocol.types import PhaseSummary
from slperf.slserver.recorder import Record, RunRecorder

CONFIG = RunConfig(paradigm="splitfed_v1", dataset="mnist", clients=2, epochs=3, model="lenet", split_layer=1)
TIMING = ("round_seconds", "wall_seconds")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Wire:
    """Each client's byte counters as the session registry reports them (they only grow)."""

    def __init__(self, **start: tuple[int, int]) -> None:
        self.counts = {cid: list(pair) for cid, pair in start.items()}

    def __call__(self, client_id: str) -> tuple[int, int]:
        up, down = self.counts.setdefault(client_id, [0, 0])
        return up, down

    def carry(self, traffic: Mapping[str, tuple[int, int]]) -> None:
        for cid, (up, down) in traffic.items():
            self.counts.setdefault(cid, [0, 0])
            self.counts[cid][0] += up
            self.counts[cid][1] += down


# What each round moves, per client: (up, down) in training, (up, down) in evaluation.
ROUNDS = [
    {"train": {"c1": (1000, 400), "c2": (2000, 800)}, "eval": {"c1": (10, 20), "c2": (0, 0)}},
    {"train": {"c1": (1100, 500), "c2": (300, 100)}, "eval": {"c1": (10, 20), "c2": (0, 0)}},
    {"train": {"c1": (900, 300), "c2": (1900, 700)}, "eval": {"c1": (10, 20), "c2": (0, 0)}},
]
ACCURACY = [0.5, 0.75, 0.625]


def _result(rnd: int) -> RoundResult:
    """Round 1: c2 drops out half way (its bytes so far still count, its training figures are gone)."""
    per_client = {"c1": PhaseSummary(samples=64, steps=2, loss_sum=1.0 + rnd, correct=32 + rnd)}
    if rnd == 1:
        return RoundResult(
            participants=["c1", "c2"], dropped=["c2"], per_client=per_client, extra={"model_shift": 0.25}
        )
    per_client["c2"] = PhaseSummary(samples=128, steps=4, loss_sum=2.0, correct=96)
    return RoundResult(participants=["c1", "c2"], per_client=per_client)


def _evaluation(rnd: int) -> EvalResult:
    return EvalResult(
        accuracy=ACCURACY[rnd],
        loss=1.0 / (rnd + 1),
        samples=500,
        extra={"per_client": {"c1": ACCURACY[rnd]}} if rnd == 2 else {},
    )


def _play(recorder: RunRecorder, wire: Wire, clock: Clock, rnd: int) -> Record:
    """One round as the coordinator drives it: 2 s of training, 1 s of evaluation, then 0.5 s to checkpoint."""
    meter = recorder.start_round(rnd, ["c1", "c2"])
    wire.carry(ROUNDS[rnd]["train"])
    clock.now += 2.0
    meter.training_done()
    wire.carry(ROUNDS[rnd]["eval"])
    clock.now += 1.0
    record = recorder.finish_round(meter, _result(rnd), _evaluation(rnd))
    clock.now += 0.5
    return record


def test_a_round_record_splits_training_from_evaluation_bytes_and_carries_the_running_total():
    clock = Clock(100.0)
    wire = Wire(c1=(50, 60))  # set-up messages before round 0 belong to no round
    recorder = RunRecorder("r1", CONFIG, wire, started=95.0, clock=clock)

    first = _play(recorder, wire, clock, 0)
    assert first == {
        "round": 0,
        "test_accuracy": 0.5,
        "test_loss": 1.0,
        "test_samples": 500,
        "train_loss": 3.0 / 6,
        "train_accuracy": 128 / 192,
        "participants": ["c1", "c2"],
        "dropped": [],
        "rejoined": [],
        "round_seconds": 3.0,
        "wall_seconds": 8.0,  # the wall clock runs from the run's start (95.0)
        "bytes_up": 3010,
        "bytes_down": 1220,
        "misbehaved": {},
        "disagreements": [],
        "test_accuracy_source": "server",
        "per_client": {
            "c1": {
                "bytes_up": 1000,
                "bytes_down": 400,
                "eval_bytes_up": 10,
                "eval_bytes_down": 20,
                "samples": 64,
                "train_loss": 0.5,
                "train_accuracy": 0.5,
            },
            "c2": {
                "bytes_up": 2000,
                "bytes_down": 800,
                "eval_bytes_up": 0,
                "eval_bytes_down": 0,
                "samples": 128,
                "train_loss": 0.5,
                "train_accuracy": 0.75,
            },
        },
    }
    second = _play(recorder, wire, clock, 1)
    assert second["dropped"] == ["c2"] and second["participants"] == ["c1", "c2"]
    assert second["per_client"]["c2"] == {
        "bytes_up": 300,
        "bytes_down": 100,
        "eval_bytes_up": 0,
        "eval_bytes_down": 0,
        "samples": 0,
        "train_loss": None,
        "train_accuracy": None,
    }
    assert (second["bytes_up"], second["bytes_down"]) == (3010 + 1410, 1220 + 620)
    assert second["extra"] == {"model_shift": 0.25} and "eval_extra" not in second
    assert "extra" not in first and "eval_extra" not in first
    assert second["rejoined"] == [], "a client that drops out has not rejoined"
    third = _play(recorder, wire, clock, 2)
    assert third["rejoined"] == ["c2"], "c2 takes part again after sitting out round 1"
    assert third["eval_extra"] == {"per_client": {"c1": 0.625}} and "extra" not in third
    assert (third["bytes_up"], third["bytes_down"]) == (4420 + 2810, 1840 + 1020)
    assert (third["round_seconds"], third["wall_seconds"]) == (3.0, 15.0)
    assert list(recorder.records) == [first, second, third]


def _stored(records: list[Record]) -> list[Record]:
    """The records as a resumed run reads them back from metrics.jsonl."""
    return [json.loads(json.dumps(r, sort_keys=True)) for r in records]


def _untimed(record: Record) -> Record:
    return {k: v for k, v in record.items() if k not in TIMING}


def test_a_resumed_recorder_continues_exactly_where_the_interrupted_one_stopped():
    clock = Clock(0.0)
    whole = RunRecorder("r1", CONFIG, Wire(), started=0.0, clock=clock)
    wire = Wire()
    for rnd in range(3):
        _play(whole, wire, clock, rnd)

    clock = Clock(0.0)
    interrupted = RunRecorder("r1", CONFIG, Wire(), started=0.0, clock=clock)
    wire = Wire()
    for rnd in range(2):
        _play(interrupted, wire, clock, rnd)
    elapsed = interrupted.elapsed()  # what the last checkpoint carried
    assert elapsed == 7.0

    # A new server process: its byte counters start at zero, its clock at some other reading.
    clock = Clock(5000.0)
    resumed = RunRecorder(
        "r1",
        CONFIG,
        Wire(),
        started=4990.0,
        records=_stored(list(interrupted.records)),
        elapsed_before=elapsed,
        clock=clock,
    )
    assert [r["round"] for r in resumed.records] == [0, 1]
    record = _play(resumed, Wire(), clock, 2)

    assert _untimed(record) == _untimed(whole.records[2])
    assert (record["bytes_up"], record["bytes_down"]) == (whole.records[2]["bytes_up"], whole.records[2]["bytes_down"])
    assert record["round_seconds"] == 3.0
    assert record["wall_seconds"] == 7.0 + 10.0 + 3.0  # before the restart + waiting after it + this round
    assert [_untimed(r) for r in resumed.records] == [_untimed(r) for r in whole.records]
    untimed_summary = {k: v for k, v in resumed.summary().items() if k != "wall_seconds"}
    assert untimed_summary == {k: v for k, v in whole.summary().items() if k != "wall_seconds"}
    assert resumed.summary()["wall_seconds"] == 7.0 + 13.5


def test_the_summary_totals_every_client_over_every_round():
    clock = Clock(10.0)
    wire = Wire()
    recorder = RunRecorder("r7", CONFIG, wire, started=10.0, clock=clock)
    for rnd in range(3):
        _play(recorder, wire, clock, rnd)
    clock.now = 42.0

    summary = recorder.summary()
    assert summary == {
        "run_id": "r7",
        "paradigm": "splitfed_v1",
        "dataset": "mnist",
        "model": "lenet",
        "split_layer": 1,
        "clients": 2,
        "client_ids": ["c1", "c2"],
        "partition_method": "homo",
        "rounds": 3,
        "test_accuracy": 0.625,
        "best_test_accuracy": 0.75,
        "test_accuracy_source": "server",
        "degraded": False,
        "degraded_reasons": [],
        "wall_seconds": 32.0,
        "bytes_up": 7230,
        "bytes_down": 2860,
        "train_bytes_up": 7200,
        "train_bytes_down": 2800,
        "per_client": {
            "c1": {
                "bytes_up": 3030,
                "bytes_down": 1260,
                "train_bytes_up": 3000,
                "train_bytes_down": 1200,
                "samples": 192,
            },
            "c2": {
                "bytes_up": 4200,
                "bytes_down": 1600,
                "train_bytes_up": 4200,
                "train_bytes_down": 1600,
                "samples": 256,
            },  # round 1 dropped its samples
        },
    }
    # The summary's byte totals are the last record's running totals, two ways to the same figure.
    assert (summary["bytes_up"], summary["bytes_down"]) == (
        recorder.records[-1]["bytes_up"],
        recorder.records[-1]["bytes_down"],
    )


def test_a_run_without_rounds_summarises_to_no_accuracy():
    recorder = RunRecorder("r0", CONFIG, Wire(), started=0.0, clock=Clock(1.5))
    summary = recorder.summary()
    assert summary["rounds"] == 0 and summary["test_accuracy"] is None and summary["best_test_accuracy"] is None
    assert summary["per_client"] == {} and summary["client_ids"] == [] and summary["bytes_up"] == 0
    assert summary["wall_seconds"] == 1.5


def test_a_round_cannot_be_recorded_without_its_training_reading():
    recorder = RunRecorder("r1", CONFIG, Wire(), started=0.0, clock=Clock(0.0))
    meter = recorder.start_round(0, ["c1"])
    with pytest.raises(RuntimeError, match="training_done"):
        recorder.finish_round(meter, _result(0), _evaluation(0))
    assert list(recorder.records) == []


def test_a_client_skipped_from_the_evaluation_for_what_it_sent_is_recorded_and_degrades_the_run():
    recorder = RunRecorder("r", CONFIG, Wire(), started=0.0, clock=Clock(0.0))
    meter = recorder.start_round(0, ["c1", "c2"])
    meter.training_done()
    result = RoundResult(participants=["c1"], dropped=["c2"], misbehaved={"c2": "poisoned compute: training"})
    evaluation = EvalResult(accuracy=0.5, loss=1.0, samples=10, misbehaved={"c1": "poisoned compute: eval", "c2": "x"})
    record = recorder.finish_round(meter, result, evaluation)
    assert record["misbehaved"] == {
        "c1": "evaluation: poisoned compute: eval",
        "c2": "poisoned compute: training; evaluation: x",
    }
    assert recorder.degraded_reasons == [
        "round 0: client c1 dropped: evaluation: poisoned compute: eval",
        "round 0: client c2 dropped: poisoned compute: training; evaluation: x",
    ]
