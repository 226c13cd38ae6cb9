"""The run coordinator: waits for the run's clients, drives the paradigm round by round, evaluates,
checkpoints after every round, and publishes progress to watchers.

It knows nothing about any particular paradigm: it asks the registry for the paradigm's server half and
talks to clients only through client handles (``ClientProxy``). What a round is worth in figures is the
``RunRecorder``'s business; the coordinator owns the run's life cycle and the order of its steps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from slperf.common.config import ConfigError, RunConfig
from slperf.common.config_loader import config_from_mapping
from slperf.common.data.registry import DATASETS
from slperf.common.paradigms import registry as paradigms
from slperf.common.paradigms.base import ClientGone, ClientHandle, ParadigmSpec, ServerParadigm
from slperf.common.protocol.types import RunState
from slperf.slserver.checkpoint import load_checkpoint, save_checkpoint
from slperf.slserver.compute import ComputeContext
from slperf.slserver.proxy import ClientProxy
from slperf.slserver.recorder import Record, RunRecorder
from slperf.slserver.run_folder import RunFolder
from slperf.slserver.sessions import SessionRegistry

log = logging.getLogger("slperf.server.run")


class RunFailed(Exception):
    """The run cannot go on for a reason its operator can act on (clients missing, a foreign checkpoint)."""


class RunClient(ClientHandle, Protocol):
    """A client as the coordinator uses it: the paradigm's handle, plus setting it up and releasing it."""

    async def session(self) -> object:
        """Sets the client up for the run (again, after a reconnect)."""
        ...

    async def finish(self, reason: str) -> None:
        """Tells the client the run is over; never raises for a client that is already gone."""
        ...


# Makes the handle of one participant: (client id, index, registry, config, run id); ClientProxy by default.
ClientFactory = Callable[[str, int, SessionRegistry, RunConfig, str], RunClient]


@dataclass
class Run:
    """A run as the server holds it: what the Control service reports and what watchers follow."""

    run_id: str
    config: RunConfig
    folder: RunFolder
    state: RunState = RunState.PENDING
    round: int = 0
    error: str = ""
    test_accuracy: float = 0.0
    summary: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None
    stop_reason: str = ""
    watchers: list[asyncio.Queue[tuple[str, dict[str, Any]]]] = field(default_factory=list)

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        for queue in list(self.watchers):
            queue.put_nowait((kind, payload))

    @property
    def finished(self) -> bool:
        return self.state.ended


@dataclass
class _Prepared:
    """A run with its clients set up and its paradigm built (and resumed): what its rounds need."""

    ctx: ComputeContext
    paradigm: ServerParadigm
    recorder: RunRecorder
    first_round: int


class RunCoordinator:
    """Starts, stops and resumes the server's one run at a time, and drives it round by round."""

    def __init__(
        self,
        registry: SessionRegistry,
        runs_dir: Path,
        executor: concurrent.futures.Executor,
        *,
        paradigm_spec: Callable[[str], ParadigmSpec] = paradigms.get,
        client_factory: ClientFactory = ClientProxy,
    ):
        """``paradigm_spec`` and ``client_factory`` are where the unit tests put their fakes."""
        self.registry = registry
        self.runs_dir = Path(runs_dir)
        self.executor = executor
        self.current: Run | None = None
        self._paradigm_spec = paradigm_spec
        self._client_factory = client_factory

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self, config: RunConfig, run_id: str | None = None) -> Run:
        if self.current is not None and not self.current.finished:
            raise RuntimeError(f"run {self.current.run_id} is still {self.current.state}; stop it first")
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        run = Run(run_id=run_id, config=config, folder=RunFolder(self.runs_dir / run_id))
        run.task = asyncio.create_task(self._execute(run), name=f"run-{run_id}")
        self.current = run
        return run

    def find_resumable(self) -> Path | None:
        """The newest run folder with a checkpoint but no final state: a run the server was killed in."""
        if not self.runs_dir.is_dir():
            return None
        candidates = [
            p
            for p in self.runs_dir.iterdir()
            if (p / "checkpoint.pt").exists() and (p / "config.yaml").exists() and not (p / "state.json").exists()
        ]
        return max(candidates, key=lambda p: (p / "checkpoint.pt").stat().st_mtime, default=None)

    def resume(self, folder: Path) -> Run | None:
        try:
            config, _ = config_from_mapping(yaml.safe_load((folder / "config.yaml").read_text()), source=str(folder))
        except (ConfigError, OSError, yaml.YAMLError) as exc:
            log.error("cannot resume %s: %s", folder.name, exc)
            return None
        return self.start(config, folder.name)

    async def stop(self, run: Run, reason: str = "operator") -> None:
        run.stop_reason = reason
        if run.task and not run.task.done():
            run.task.cancel()
            try:
                await run.task
            except asyncio.CancelledError:
                pass

    # -- one run, from its start to its end state ------------------------------------------------------
    async def _execute(self, run: Run) -> None:
        """Runs ``run`` to an end state; whichever way it ends, its clients are released and watchers told."""
        started = time.monotonic()
        clients: list[RunClient] = []
        try:
            spec = self._paradigm_spec(run.config.paradigm)
            dataset = DATASETS[run.config.dataset]
            clients = await self._gather_clients(run)
            prepared = await self._prepare(run, spec, dataset.num_classes, tuple(dataset.input_shape), clients, started)
            await self._rounds(run, prepared, clients)
            await self._finish(run, prepared)
            run.state = RunState.FINISHED
        except asyncio.CancelledError:
            if run.stop_reason == "operator":
                run.state, run.error = RunState.STOPPED, "stopped by the operator"
            else:
                run.state = RunState.INTERRUPTED
                run.error = "server shut down; the run resumes from its checkpoint on restart"
            raise
        except (RunFailed, ClientGone) as exc:
            run.state, run.error = RunState.FAILED, str(exc)
            log.error("run %s failed: %s", run.run_id, exc)
        except Exception as exc:  # a bug must end the run visibly, not kill the server
            run.state, run.error = RunState.FAILED, f"{type(exc).__name__}: {exc}"
            log.exception("run %s failed", run.run_id)
        finally:
            await asyncio.gather(*(c.finish(run.state) for c in clients), return_exceptions=True)
            if run.state.final:
                # A final state marks the folder as not resumable; an interrupted or killed server writes none.
                run.folder.write_state({"state": run.state, "error": run.error})
            run.publish("state", {"state": run.state, "error": run.error})

    async def _gather_clients(self, run: Run) -> list[RunClient]:
        """Records the config, then waits for the run's participants; their handles, in client order."""
        run.folder.write_config(run.config.to_dict())
        run.state = RunState.WAITING_FOR_CLIENTS
        run.publish("state", {"state": run.state})
        ids = await self._participants(run.config)

        def handles() -> list[RunClient]:
            return [self._client_factory(cid, i, self.registry, run.config, run.run_id) for i, cid in enumerate(ids)]

        # Off the event loop: a handle derives its client's declared exchange, which may build the model once.
        return await asyncio.to_thread(handles)

    async def _participants(self, config: RunConfig) -> list[str]:
        wanted = config.participant_ids()
        timeout = config.client_timeout
        try:
            if wanted:
                await self.registry.wait_for(lambda s: all(i in s for i in wanted), timeout)
                return wanted
            await self.registry.wait_for(lambda s: len(s) >= config.clients, timeout)
        except TimeoutError:
            have = sorted(self.registry.sessions)
            raise RunFailed(
                f"only {len(have)} of {config.clients} clients connected within {timeout:.0f} s "
                f"(connected: {', '.join(have) or 'none'})"
            ) from None
        return sorted(self.registry.sessions)[: config.clients]

    async def _prepare(
        self,
        run: Run,
        spec: ParadigmSpec,
        num_classes: int,
        input_shape: tuple[int, ...],
        clients: list[RunClient],
        started: float,
    ) -> _Prepared:
        """Builds the paradigm's server half, continues from a checkpoint if there is one, sets the clients up."""
        config = run.config
        ctx = ComputeContext(config, run.run_id, self.executor)
        paradigm: ServerParadigm = await ctx.compute(spec.server, config, ctx, num_classes, input_shape)
        first_round, records, elapsed_before = self._resume(run, paradigm)
        recorder = RunRecorder(
            run.run_id,
            config,
            self.registry.client_bytes,
            started=started,
            records=records,
            elapsed_before=elapsed_before,
        )
        await self._set_up(run, clients)
        run.state = RunState.RUNNING
        ids = [c.client_id for c in clients]
        run.publish("state", {"state": run.state, "clients": ids})
        log.info("run %s: %s with %s on %s", run.run_id, config.paradigm, ", ".join(ids), config.dataset)
        return _Prepared(ctx, paradigm, recorder, first_round)

    async def _set_up(self, run: Run, clients: list[RunClient]) -> None:
        """Sets every participant up for the run at once. One that never answers (gone, or slower than
        client_timeout to load its data) is left out like any late client: its handle sets it up again when it
        rejoins, and the paradigm goes on without it meanwhile if it can. Only a run none of whose clients could be
        set up fails here."""
        outcomes = await asyncio.gather(*(c.session() for c in clients), return_exceptions=True)
        missing: list[str] = []
        for client, outcome in zip(clients, outcomes, strict=True):
            if isinstance(outcome, ClientGone):
                missing.append(f"{client.client_id} ({outcome.reason})")
            elif isinstance(outcome, BaseException):
                raise outcome
        if len(missing) == len(clients):
            raise RunFailed(f"no client could be set up for the run: {'; '.join(missing)}")
        for entry in missing:
            log.warning("run %s: client %s did not answer set-up; it rejoins when it reconnects", run.run_id, entry)

    def _resume(self, run: Run, paradigm: ServerParadigm) -> tuple[int, list[Record], float]:
        """Continues a run whose checkpoint is in its folder (a server restart): no completed round is lost."""
        path = run.folder.checkpoint_path
        if not path.exists():
            return 0, [], 0.0
        state = load_checkpoint(path)
        if state.get("config") != run.config.to_dict():
            raise RunFailed(f"{path} belongs to a run with another config; use a new run id")
        paradigm.load_state_dict(state["paradigm"])
        records = [r for r in run.folder.read_metrics() if r["round"] <= state["round"]]
        run.folder.rewrite_metrics(records)  # drop a round recorded after the last checkpoint
        log.info("run %s resumes after round %d", run.run_id, state["round"])
        return int(state["round"]) + 1, records, float(state.get("elapsed", 0.0))

    async def _rounds(self, run: Run, prepared: _Prepared, clients: list[RunClient]) -> None:
        """Every remaining round: train, evaluate, record, checkpoint, publish."""
        paradigm, recorder = prepared.paradigm, prepared.recorder
        for rnd in range(prepared.first_round, run.config.epochs):
            run.round = rnd
            meter = recorder.start_round(rnd, [c.client_id for c in clients])
            result = await paradigm.train_round(rnd, clients)
            meter.training_done()
            evaluation = await paradigm.evaluate(rnd, clients)
            record = recorder.finish_round(meter, result, evaluation)
            run.test_accuracy = record["test_accuracy"]
            run.folder.append_metrics(record)
            checkpoint = {
                "run_id": run.run_id,
                "round": rnd,
                "config": run.config.to_dict(),
                "paradigm": paradigm.state_dict(),
                "model": paradigm.model_state(),
                "elapsed": recorder.elapsed(),
            }
            await prepared.ctx.compute(save_checkpoint, run.folder.checkpoint_path, checkpoint)
            run.publish("round", record)

    async def _finish(self, run: Run, prepared: _Prepared) -> None:
        """The run's summary and plots, once every round is done."""
        config = run.config
        run.summary = prepared.recorder.summary()
        run.summary.update(prepared.paradigm.describe())
        run.folder.write_summary(run.summary)
        await prepared.ctx.compute(
            run.folder.write_plots, prepared.recorder.records, f"{config.paradigm} on {config.dataset}"
        )
