"""The run coordinator's life cycle against a fake paradigm, fake client handles and a fake session registry:
resume from a checkpoint, refusal of a foreign checkpoint, a client dropping out, and the two ways a run
is cancelled (the operator stops it; the server shuts down under it).

Everything runs in one event loop and in-process; the only real parts are the coordinator, its recorder,
the run folder and the checkpoint file. Tests wait on events and on the run's task, never on the clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from slperf.common.config import RunConfig
from slperf.common.config_loader import config_from_mapping
from slperf.common.fsutil import TempName
from slperf.common.paradigms.base import (
    ClientGone,
    ClientParadigm,
    EvalResult,
    ParadigmSpec,
    RoundResult,
    ServerContext,
    ServerParadigm,
)
from slperf.common.paradigms.kit.rounds import gather_round
from slperf.common.protocol.exchange import Exchange
from slperf.common.protocol.types import PhaseSummary, RunState
from slperf.slserver.checkpoint import load_checkpoint, save_checkpoint
from slperf.slserver.coordinator import Run, RunCoordinator, RunExists
from slperf.slserver.run_folder import RunFolder

T = TypeVar("T")

TRAIN_BYTES = {"c1": (1000, 500), "c2": (2000, 500)}
EVAL_BYTES = (10, 20)  # evaluation runs through the first client only
SETUP_BYTES = (50, 50)  # run set-up, before any round: no round's figures


def _config(**overrides: Any) -> RunConfig:
    # A real paradigm name, so that the run folder's config.yaml resolves on resume; the coordinator under
    # test is handed the fake paradigm whatever the name says.
    config, _ = config_from_mapping(
        {"paradigm": "vanilla", "dataset": "mnist", "clients": 2, "epochs": 3, "seed": 0, **overrides}
    )
    return config


async def _within(awaitable: Awaitable[T]) -> T:
    """Fails a hung test in seconds instead of at the suite's timeout."""
    return await asyncio.wait_for(awaitable, 30)


class FakeRegistry:
    """The session registry as the coordinator sees it: who is connected, and each client's byte counters."""

    def __init__(self, client_ids: Sequence[str]) -> None:
        self.sessions: dict[str, object] = {cid: object() for cid in client_ids}
        self.bytes: dict[str, list[int]] = {cid: [0, 0] for cid in client_ids}
        self.kinds: dict[str, dict[str, int]] = {cid: {} for cid in client_ids}

    async def wait_for(self, predicate: Any, timeout: float | None) -> None:
        if not predicate(self.sessions):  # nobody else will connect: the real registry would time out
            raise TimeoutError

    def client_bytes(self, client_id: str) -> tuple[int, int]:
        up, down = self.bytes[client_id]
        return up, down

    def client_kinds(self, client_id: str) -> dict[str, int]:
        return dict(self.kinds.get(client_id, {}))

    def carry(self, client_id: str, traffic: tuple[int, int]) -> None:
        self.bytes[client_id][0] += traffic[0]
        self.bytes[client_id][1] += traffic[1]


def _no_exchange(config: RunConfig, client_index: int) -> Exchange:
    return Exchange(train=(), eval=(), num_classes=10, max_batch=1, max_eval_batch=1)


class FakeClient:
    """A client handle whose traffic is counted in the fake registry; it drops out in the rounds it is told to."""

    def __init__(self, world: World, client_id: str, index: int) -> None:
        self.world = world
        self.client_id = client_id
        self.index = index
        self.train_samples = 64
        self.set_up = 0
        self.finished: list[str] = []

    async def session(self) -> object:
        self.set_up += 1
        if self.client_id in self.world.silent_at_setup and self.set_up == 1:
            raise ClientGone(self.client_id, "no message for 30 s (client_timeout)")
        self.world.registry.carry(self.client_id, SETUP_BYTES)
        return self

    async def finish(self, reason: str) -> None:
        self.finished.append(reason)

    def take_disagreements(self) -> list:
        return []

    async def train_pass(self, round: int) -> PhaseSummary:
        if round in self.world.drops.get(self.client_id, ()):
            self.world.registry.carry(self.client_id, (300, 0))  # half a pass, then the connection is gone
            raise ClientGone(self.client_id, "connection reset")
        self.world.registry.carry(self.client_id, TRAIN_BYTES[self.client_id])
        return PhaseSummary(samples=self.train_samples, steps=2, loss_sum=1.0, correct=32)

    async def eval_pass(self) -> None:
        self.world.registry.carry(self.client_id, EVAL_BYTES)


class FakeParadigm(ServerParadigm):
    """Trains every client in parallel (dropouts go to ``dropped``; with ``needs_all`` one in turn, and a
    dropout ends the run), evaluates through the first client."""

    world: World  # set on the subclass each World makes

    def __init__(self, config: RunConfig, ctx: ServerContext, num_classes: int, input_shape: tuple[int, ...]):
        super().__init__(config, ctx, num_classes, input_shape)
        self.trained: list[int] = []
        self.loaded: dict[str, Any] | None = None
        self.world.paradigms.append(self)

    async def train_round(self, round: int, clients: Sequence[Any]) -> RoundResult:
        if round == self.world.hold_round:
            self.world.holding.set()
            await asyncio.get_running_loop().create_future()  # until the run is cancelled
        result = RoundResult(participants=[c.client_id for c in clients])
        if self.world.needs_all:  # a client gone ends the run (ClientGone reaches the coordinator)
            for client in clients:
                result.per_client[client.client_id] = await client.train_pass(round)
            return result
        outcome = await gather_round(clients, lambda c: c.train_pass(round))
        result.dropped.extend(outcome.dropped)
        for client, summary in outcome.done:
            result.per_client[client.client_id] = summary
        self.trained.append(round)
        return result

    async def evaluate(self, round: int, clients: Sequence[Any]) -> EvalResult:
        await clients[0].eval_pass()
        return EvalResult(accuracy=0.25 * (round + 1), loss=1.0 / (round + 1), samples=100)

    def state_dict(self) -> dict[str, Any]:
        return {"trained": list(self.trained)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loaded = dict(state)
        self.trained = list(state["trained"])

    def describe(self) -> dict[str, Any]:
        return {"cut": "fake"}


class World:
    """One server process's surroundings: its connected clients, the paradigm it builds, what happened."""

    def __init__(
        self,
        *client_ids: str,
        drops: Mapping[str, set[int]] | None = None,
        hold_round: int | None = None,
        needs_all: bool = False,
        silent_at_setup: set[str] | None = None,
    ) -> None:
        self.registry = FakeRegistry(client_ids)
        self.silent_at_setup = set(silent_at_setup or ())  # these never answer their first set-up
        self.drops = dict(drops or {})
        self.needs_all = needs_all
        self.hold_round = hold_round  # train_round of this round waits until the run is cancelled
        self.holding = asyncio.Event()
        self.clients: dict[str, FakeClient] = {}
        self.paradigms: list[FakeParadigm] = []
        self.asked: list[str] = []
        self._paradigm = type("WorldParadigm", (FakeParadigm,), {"world": self})

    def spec(self, name: str) -> ParadigmSpec:
        self.asked.append(name)
        return ParadigmSpec(name="fake", server=self._paradigm, client=ClientParadigm, exchange=_no_exchange)

    def client(self, client_id: str, index: int, registry: Any, config: RunConfig, run_id: str) -> FakeClient:
        assert registry is self.registry and run_id
        self.clients[client_id] = FakeClient(self, client_id, index)
        return self.clients[client_id]

    def coordinator(self, runs: Path, executor: concurrent.futures.Executor) -> RunCoordinator:
        return RunCoordinator(
            self.registry,
            runs,
            executor,
            paradigm_spec=self.spec,  # type: ignore[arg-type]
            client_factory=self.client,
        )

    def finished(self) -> dict[str, list[str]]:
        return {cid: c.finished for cid, c in self.clients.items()}


@pytest.fixture
def executor() -> Iterator[concurrent.futures.Executor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def _watch(run: Run) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    run.watchers.append(queue)
    return queue


def _events(queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [queue.get_nowait() for _ in range(queue.qsize())]


def _state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "state.json").read_text())


async def _interrupt_after_round_0(runs: Path, executor: concurrent.futures.Executor, config: RunConfig) -> Run:
    """A server that shuts down while round 1 trains: round 0 is recorded and checkpointed."""
    world = World("c1", "c2", hold_round=1)
    coordinator = world.coordinator(runs, executor)
    run = coordinator.start(config, "r1")
    await _within(world.holding.wait())
    await _within(coordinator.stop(run, reason="shutdown"))
    assert run.state is RunState.INTERRUPTED
    assert world.finished() == {"c1": [RunState.INTERRUPTED], "c2": [RunState.INTERRUPTED]}
    return run


def test_a_resumed_run_continues_at_the_next_round_and_keeps_the_earlier_records(tmp_path, executor):
    config = _config()
    folder = tmp_path / "r1"

    async def main() -> tuple[World, Run, list[dict[str, Any]]]:
        await _interrupt_after_round_0(tmp_path, executor, config)
        kept = RunFolder(folder).read_metrics()
        assert [r["round"] for r in kept] == [0]
        # The server died between writing round 1's record and its checkpoint: that record must go.
        RunFolder(folder).append_metrics({**kept[0], "round": 1, "test_accuracy": 0.99})

        world = World("c1", "c2")  # the restarted server: new sessions, byte counters from zero
        coordinator = world.coordinator(tmp_path, executor)
        assert coordinator.find_resumable() == folder
        run = coordinator.resume(folder)
        assert run is not None
        await _within(run.task)
        return world, run, kept

    world, run, kept = asyncio.run(main())
    assert run.state is RunState.FINISHED and run.error == ""
    assert world.asked == ["vanilla"]
    (paradigm,) = world.paradigms
    assert paradigm.loaded == {"trained": [0]}  # the checkpoint's state, not a fresh paradigm
    assert paradigm.trained == [0, 1, 2]  # round 0 was not trained again
    assert all(c.set_up == 1 for c in world.clients.values())

    records = RunFolder(folder).read_metrics()
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[0] == kept[0]  # the earlier record is kept as it was
    per_round = (
        TRAIN_BYTES["c1"][0] + TRAIN_BYTES["c2"][0] + EVAL_BYTES[0],
        TRAIN_BYTES["c1"][1] + TRAIN_BYTES["c2"][1] + EVAL_BYTES[1],
    )
    assert (kept[0]["bytes_up"], kept[0]["bytes_down"]) == per_round
    # The running totals continue from the kept record, though the new server's counters started at zero.
    assert [(r["bytes_up"], r["bytes_down"]) for r in records] == [
        (per_round[0] * n, per_round[1] * n) for n in (1, 2, 3)
    ]
    assert [r["test_accuracy"] for r in records] == [0.25, 0.5, 0.75]
    assert records[2]["wall_seconds"] >= kept[0]["wall_seconds"]

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["cut"] == "fake"
    assert summary["per_client"]["c1"]["samples"] == 3 * 64
    assert (summary["bytes_up"], summary["bytes_down"]) == (records[2]["bytes_up"], records[2]["bytes_down"])
    assert summary == run.summary
    checkpoint = load_checkpoint(folder / "checkpoint.pt")
    assert checkpoint["round"] == 2 and checkpoint["paradigm"] == {"trained": [0, 1, 2]}
    assert _state(folder) == {"state": "finished", "error": ""}
    assert world.finished() == {"c1": [RunState.FINISHED], "c2": [RunState.FINISHED]}


def test_a_checkpoint_of_another_config_is_refused_and_the_folder_is_left_as_it_was(tmp_path, executor):
    foreign = _config(lr=0.5)
    folder = RunFolder(tmp_path / "r1")
    folder.write_config(_config().to_dict())
    save_checkpoint(
        folder.checkpoint_path,
        {"run_id": "r1", "round": 0, "config": foreign.to_dict(), "paradigm": {"trained": [0]}, "model": {}},
    )
    folder.append_metrics({"round": 0, "bytes_up": 1, "bytes_down": 1, "per_client": {}})
    before = {p.name: p.read_bytes() for p in folder.path.iterdir()}
    world = World("c1", "c2")

    async def main() -> tuple[Run, RunCoordinator]:
        coordinator = world.coordinator(tmp_path, executor)
        run = coordinator.resume(folder.path)
        await _within(run.task)
        return run, coordinator

    run, coordinator = asyncio.run(main())
    assert run.state is RunState.FAILED
    assert "belongs to a run with another config" in run.error and str(folder.checkpoint_path) in run.error
    assert world.paradigms == [] and world.clients == {}  # refused before anyone was waited for
    # The foreign run's folder is untouched (its config, records, checkpoint; no state.json): still resumable.
    assert {p.name: p.read_bytes() for p in folder.path.iterdir()} == before
    assert coordinator.find_resumable() == folder.path


def test_a_start_under_an_existing_run_id_is_refused_and_writes_nothing(tmp_path, executor):
    failed = RunFolder(tmp_path / "old")
    failed.write_state({"state": "failed", "error": "it failed"})
    before = {p.name: p.read_bytes() for p in failed.path.iterdir()}
    world = World("c1", "c2", hold_round=0)

    async def main() -> None:
        coordinator = world.coordinator(tmp_path, executor)
        with pytest.raises(RunExists, match="'old' already has a folder"):
            coordinator.start(_config(), "old")
        running = coordinator.start(_config(), "r1")
        coordinator.start(_config(), "r2")  # queued
        for taken in ("r1", "r2"):
            with pytest.raises(RunExists, match=f"'{taken}' is taken by a run on this server"):
                coordinator.start(_config(), taken)
        await _within(world.holding.wait())
        await _within(coordinator.stop(running))
        assert coordinator.current is not None and coordinator.current.run_id == "r2"
        await _within(coordinator.stop(coordinator.current))

    asyncio.run(main())
    assert {p.name: p.read_bytes() for p in failed.path.iterdir()} == before  # the failed run's state.json is kept


def test_runs_started_while_one_is_going_are_queued_in_order_and_a_queued_run_can_be_removed(tmp_path, executor):
    world = World("c1", "c2", hold_round=1)

    async def main() -> tuple[RunCoordinator, list[Run], list[tuple[str, dict[str, Any]]]]:
        coordinator = world.coordinator(tmp_path, executor)
        first = coordinator.start(_config(), "r1")
        await _within(world.holding.wait())
        second, third = coordinator.start(_config(), "r2"), coordinator.start(_config(epochs=1), "r3")
        assert (second.state, third.state) == (RunState.QUEUED, RunState.QUEUED)
        assert coordinator.queue == [second, third] and coordinator.current is first
        assert json.loads((tmp_path / "r3" / "queued.json").read_text())["config"] == _config(epochs=1).to_dict()
        removed = _watch(second)
        await _within(coordinator.stop(second))  # removed from the queue: never started
        assert coordinator.queue == [third]
        watched = _watch(third)
        await _within(coordinator.stop(first))
        assert coordinator.current is third  # the next queued run starts once the one before it ended
        await _within(third.task)  # one round: finishes
        return coordinator, [first, second, third], _events(removed) + _events(watched)

    coordinator, (first, second, third), events = asyncio.run(main())
    assert first.state is RunState.STOPPED and third.state is RunState.FINISHED, third.error
    assert second.state is RunState.STOPPED and second.error == "removed from the queue by the operator"
    assert _state(tmp_path / "r2") == {"state": "stopped", "error": "removed from the queue by the operator"}
    assert sorted(p.name for p in (tmp_path / "r2").iterdir()) == ["state.json"]  # nothing else: it never ran
    assert not (tmp_path / "r3" / "queued.json").exists() and _state(tmp_path / "r3")["state"] == "finished"
    assert events[0] == ("state", {"state": RunState.STOPPED, "error": "removed from the queue by the operator"})
    assert ("state", {"state": RunState.WAITING_FOR_CLIENTS}) in events and events[-1][1]["state"] == "finished"
    assert coordinator.queue == []


def test_a_restart_queues_the_queued_runs_again_in_their_order_behind_the_resumed_run(tmp_path, executor):
    async def before_restart() -> None:
        world = World("c1", "c2", hold_round=1)
        coordinator = world.coordinator(tmp_path, executor)
        run = coordinator.start(_config(), "r1")
        await _within(world.holding.wait())
        coordinator.start(_config(epochs=1), "zz")  # queued first, though its name sorts last
        coordinator.start(_config(epochs=1), "aa")
        await _within(coordinator.stop(run, reason="shutdown"))  # the server shuts down: nothing new starts
        assert coordinator.current is run and [r.run_id for r in coordinator.queue] == ["zz", "aa"]

    async def after_restart() -> list[Run]:
        world = World("c1", "c2")
        coordinator = world.coordinator(tmp_path, executor)
        resumed = coordinator.recover()
        assert resumed is not None and resumed.run_id == "r1"
        queued = list(coordinator.queue)
        assert [r.run_id for r in queued] == ["zz", "aa"] and all(r.state is RunState.QUEUED for r in queued)
        await _within(resumed.task)
        for run in queued:
            assert coordinator.current is run
            await _within(run.task)
        return [resumed, *queued]

    asyncio.run(before_restart())
    runs = asyncio.run(after_restart())
    assert [r.state for r in runs] == [RunState.FINISHED] * 3
    assert [len(RunFolder(tmp_path / r.run_id).read_metrics()) for r in runs] == [3, 1, 1]


def test_a_run_whose_last_round_nobody_evaluated_fails_saying_why(tmp_path, executor):
    world = World("c1", "c2")

    async def main() -> Run:
        world._paradigm.evaluate = _evaluate_nothing  # type: ignore[method-assign]
        run = world.coordinator(tmp_path, executor).start(_config(epochs=2), "r1")
        await _within(run.task)
        return run

    run = asyncio.run(main())
    assert run.state is RunState.FAILED
    assert run.error.startswith("no client evaluated in the run's last round (round 2: 0 test samples)")
    assert _state(tmp_path / "r1") == {"state": "failed", "error": run.error}
    assert not (tmp_path / "r1" / "summary.json").exists()


async def _evaluate_nothing(self: FakeParadigm, round: int, clients: Sequence[Any]) -> EvalResult:
    return EvalResult(accuracy=0.0, loss=0.0, samples=0)


def _killed_before_first_checkpoint(runs: Path, config: RunConfig, run_id: str = "r1") -> RunFolder:
    """What a server killed during round 0 leaves: the config and perhaps round 0's record, no checkpoint."""
    folder = RunFolder(runs / run_id)
    folder.write_config(config.to_dict())
    folder.append_metrics({"round": 0, "test_accuracy": 0.9, "bytes_up": 1, "bytes_down": 1, "per_client": {}})
    return folder


def test_a_run_killed_before_its_first_checkpoint_restarts_from_round_0(tmp_path, executor, caplog):
    folder = _killed_before_first_checkpoint(tmp_path, _config())
    world = World("c1", "c2")

    async def main() -> tuple[Run | None, RunCoordinator]:
        coordinator = world.coordinator(tmp_path, executor)
        assert coordinator.find_resumable() == folder.path
        run = coordinator.recover()
        if run is not None:
            await _within(run.task)
        return run, coordinator

    with caplog.at_level(logging.INFO, logger="slperf.server.run"):
        run, coordinator = asyncio.run(main())
    assert run is not None and coordinator.current is run and run.run_id == "r1"
    assert run.state is RunState.FINISHED, run.error
    assert "run r1 restarts from round 0" in caplog.text
    (paradigm,) = world.paradigms
    assert paradigm.loaded is None and paradigm.trained == [0, 1, 2]
    records = folder.read_metrics()
    assert [r["round"] for r in records] == [0, 1, 2]  # the uncheckpointed record of round 0 was replaced
    assert records[0]["test_accuracy"] == 0.25
    assert _state(folder.path) == {"state": "finished", "error": ""}


def test_a_run_whose_config_no_longer_loads_is_marked_failed_and_reported(tmp_path, executor):
    folder = _killed_before_first_checkpoint(tmp_path, _config())
    config_text = (folder.path / "config.yaml").read_text() + "retired_key: 1\n"
    (folder.path / "config.yaml").write_text(config_text)
    world = World("c1", "c2")

    async def main() -> tuple[Run | None, RunCoordinator]:
        coordinator = world.coordinator(tmp_path, executor)
        return coordinator.recover(), coordinator

    run, coordinator = asyncio.run(main())
    assert run is not None and coordinator.current is run and run.run_id == "r1"
    assert run.state is RunState.FAILED and run.finished and run.task is None
    assert run.error.startswith("cannot restart run r1 after a server restart: ") and "retired_key" in run.error
    assert _state(folder.path) == {"state": "failed", "error": run.error}
    assert (folder.path / "config.yaml").read_text() == config_text  # kept for the operator to look at
    assert [r["round"] for r in folder.read_metrics()] == [0]
    assert world.paradigms == [] and coordinator.find_resumable() is None


def test_older_unfinished_runs_are_marked_failed_and_only_the_newest_continues(tmp_path, executor):
    old = _killed_before_first_checkpoint(tmp_path, _config(), "old")
    new = _killed_before_first_checkpoint(tmp_path, _config(), "new")
    for path in old.path.iterdir():
        os.utime(path, (1_000_000, 1_000_000))
    world = World("c1", "c2")

    async def main() -> Run | None:
        run = world.coordinator(tmp_path, executor).recover()
        if run is not None:
            await _within(run.task)
        return run

    run = asyncio.run(main())
    assert run is not None and run.run_id == "new" and run.state is RunState.FINISHED
    assert _state(old.path) == {
        "state": "failed",
        "error": "not resumed: the server resumed the newer unfinished run new; start this one again under a new "
        "run id",
    }
    assert _state(new.path)["state"] == "finished"


def test_nothing_to_recover_is_no_run(tmp_path, executor):
    (tmp_path / "a-user-folder").mkdir()
    coordinator = World().coordinator(tmp_path / "runs", executor)
    assert coordinator.recover() is None and coordinator.current is None
    assert World().coordinator(tmp_path, executor).recover() is None


def test_recovery_removes_dead_writers_temporary_files_and_nothing_else(tmp_path, executor):
    folder = RunFolder(tmp_path / "done")
    folder.write_state({"state": "finished", "error": ""})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = [folder.path / str(TempName("checkpoint.pt", dead.pid, f"{i:08x}")) for i in range(3)]
    leftovers.append(tmp_path / str(TempName("index.json", dead.pid, "0000000a")))
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    user_files = [folder.path / "checkpoint.pt.tmp", folder.path / ".notes.tmp", tmp_path / "README.tmp"]
    for path in user_files:
        path.write_bytes(b"mine")

    assert World().coordinator(tmp_path, executor).recover() is None
    assert not any(path.exists() for path in leftovers)
    assert all(path.read_bytes() == b"mine" for path in user_files)


def test_a_torn_metrics_tail_is_repaired_and_the_run_resumes(tmp_path, executor, caplog):
    config = _config()

    async def main() -> Run:
        await _interrupt_after_round_0(tmp_path, executor, config)
        folder = RunFolder(tmp_path / "r1")
        with open(folder.metrics_path, "ab") as handle:
            handle.write(b'{"round": 1, "test_accu')  # the power went while round 1's record was appended
        run = World("c1", "c2").coordinator(tmp_path, executor).recover()
        assert run is not None
        await _within(run.task)
        return run

    with caplog.at_level(logging.WARNING, logger="slperf.server.run"):
        run = asyncio.run(main())
    folder = RunFolder(tmp_path / "r1")
    assert run.state is RunState.FINISHED, run.error
    assert [r["round"] for r in folder.read_metrics()] == [0, 1, 2]
    assert f"{folder.metrics_path}: dropped a torn last line" in caplog.text


def test_a_damaged_metrics_line_fails_the_run_naming_file_and_line(tmp_path, executor):
    config = _config()

    async def main() -> Run:
        await _interrupt_after_round_0(tmp_path, executor, config)
        folder = RunFolder(tmp_path / "r1")
        folder.metrics_path.write_bytes(b"not a record\n" + folder.metrics_path.read_bytes())
        run = World("c1", "c2").coordinator(tmp_path, executor).recover()
        assert run is not None
        await _within(run.task)
        return run

    run = asyncio.run(main())
    folder = RunFolder(tmp_path / "r1")
    assert run.state is RunState.FAILED
    assert run.error.startswith(f"{folder.metrics_path} line 1 is not JSON")
    assert _state(folder.path) == {"state": "failed", "error": run.error}


def test_a_client_dropping_out_is_recorded_in_dropped_and_the_run_goes_on(tmp_path, executor):
    world = World("c1", "c2", drops={"c2": {1}})

    async def main() -> tuple[Run, list[tuple[str, dict[str, Any]]]]:
        run = world.coordinator(tmp_path, executor).start(_config(), "r1")
        queue = _watch(run)
        await _within(run.task)
        return run, _events(queue)

    run, events = asyncio.run(main())
    assert run.state is RunState.FINISHED
    records = RunFolder(tmp_path / "r1").read_metrics()
    assert [r["dropped"] for r in records] == [[], ["c2"], []]
    assert all(r["participants"] == ["c1", "c2"] for r in records)
    assert records[1]["per_client"]["c2"] == {
        "bytes_up": 300,
        "bytes_down": 0,
        "eval_bytes_up": 0,
        "eval_bytes_down": 0,
        "samples": 0,
        "train_loss": None,
        "train_accuracy": None,
    }
    assert records[1]["per_client"]["c1"]["samples"] == 64 and records[1]["train_accuracy"] == 0.5
    summary = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert summary["per_client"]["c2"]["samples"] == 2 * 64 and summary["per_client"]["c1"]["samples"] == 3 * 64
    # Watchers see the run's states and every round's record, in order.
    assert [(kind, payload.get("state")) for kind, payload in events] == [
        ("state", RunState.WAITING_FOR_CLIENTS),
        ("state", RunState.RUNNING),
        ("round", None),
        ("round", None),
        ("round", None),
        ("state", RunState.FINISHED),
    ]
    assert events[1][1]["clients"] == ["c1", "c2"]
    assert [payload for kind, payload in events if kind == "round"] == records


def test_a_paradigm_that_cannot_go_on_without_a_client_fails_the_run_with_its_reason(tmp_path, executor):
    world = World("c1", "c2", drops={"c1": {0}}, needs_all=True)

    async def main() -> Run:
        run = world.coordinator(tmp_path, executor).start(_config(), "r1")
        await _within(run.task)
        return run

    run = asyncio.run(main())
    assert run.state is RunState.FAILED
    assert run.error == "client c1 dropped out: connection reset"
    assert RunFolder(tmp_path / "r1").read_metrics() == []
    assert _state(tmp_path / "r1") == {"state": "failed", "error": run.error}
    assert world.finished() == {"c1": [RunState.FAILED], "c2": [RunState.FAILED]}


def test_too_few_clients_fail_the_run_and_say_who_is_connected(tmp_path, executor):
    world = World("c1")

    async def main() -> Run:
        run = world.coordinator(tmp_path, executor).start(_config(connect_timeout=7), "r1")
        await _within(run.task)
        return run

    run = asyncio.run(main())
    assert run.state is RunState.FAILED
    assert run.error == "only 1 of 2 clients connected within 7 s (connect_timeout) (connected: c1)"
    assert world.clients == {} and world.paradigms == []
    assert _state(tmp_path / "r1") == {"state": "failed", "error": run.error}


def test_stop_by_the_operator_ends_in_stopped_with_a_final_state(tmp_path, executor):
    world = World("c1", "c2", hold_round=1)

    async def main() -> tuple[Run, RunCoordinator, list[tuple[str, dict[str, Any]]]]:
        coordinator = world.coordinator(tmp_path, executor)
        run = coordinator.start(_config(), "r1")
        queue = _watch(run)
        await _within(world.holding.wait())
        await _within(coordinator.stop(run))
        return run, coordinator, _events(queue)

    run, coordinator, events = asyncio.run(main())
    assert run.state is RunState.STOPPED and run.finished
    assert run.error == "stopped by the operator"
    assert _state(tmp_path / "r1") == {"state": "stopped", "error": "stopped by the operator"}
    assert coordinator.find_resumable() is None  # a final state: never resumed
    assert world.finished() == {"c1": [RunState.STOPPED], "c2": [RunState.STOPPED]}
    assert events[-1] == ("state", {"state": RunState.STOPPED, "error": "stopped by the operator"})
    assert [r["round"] for r in RunFolder(tmp_path / "r1").read_metrics()] == [0]


def test_cancellation_by_shutdown_ends_in_interrupted_without_a_final_state(tmp_path, executor):
    async def main() -> tuple[Run, RunCoordinator]:
        run = await _interrupt_after_round_0(tmp_path, executor, _config())
        return run, World().coordinator(tmp_path, executor)

    run, restarted = asyncio.run(main())
    assert run.state is RunState.INTERRUPTED and run.finished and not run.state.final
    assert run.error == "server shut down; the run resumes from its checkpoint on restart"
    assert not (tmp_path / "r1" / "state.json").exists()
    assert restarted.find_resumable() == tmp_path / "r1"
    assert load_checkpoint(tmp_path / "r1" / "checkpoint.pt")["round"] == 0


def test_a_client_that_never_answers_set_up_is_left_out_and_the_run_goes_on(tmp_path, executor):
    world = World("c1", "c2", silent_at_setup={"c2"})

    async def main() -> Run:
        run = world.coordinator(tmp_path, executor).start(_config(), "r1")
        await _within(run.task)
        return run

    run = asyncio.run(main())
    assert run.state is RunState.FINISHED, run.error
    assert len(RunFolder(tmp_path / "r1").read_metrics()) == 3
    assert world.finished() == {"c1": [RunState.FINISHED], "c2": [RunState.FINISHED]}


def test_a_run_none_of_whose_clients_answers_set_up_fails_and_names_them(tmp_path, executor):
    world = World("c1", "c2", silent_at_setup={"c1", "c2"})

    async def main() -> Run:
        run = world.coordinator(tmp_path, executor).start(_config(), "r1")
        await _within(run.task)
        return run

    run = asyncio.run(main())
    assert run.state is RunState.FAILED
    assert run.error.startswith("no client could be set up for the run: c1 (no message for 30 s")
    assert "c2 (no message" in run.error
