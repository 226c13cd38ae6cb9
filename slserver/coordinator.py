"""The run coordinator: waits for the run's clients, drives the paradigm round by round, evaluates,
checkpoints after every round, and publishes progress to watchers.

It knows nothing about any particular paradigm: it asks the registry for the paradigm's server half and
talks to clients only through client handles (``ClientProxy``). What a round is worth in figures is the
``RunRecorder``'s business; the coordinator owns the run's life cycle and the order of its steps.

A run folder is the run, as far as a server restart is concerned: ``config.yaml`` from the moment the run
has its clients waited for, ``metrics.jsonl`` and ``checkpoint.pt`` after every round, ``state.json`` once it
is over for good (finished, failed, stopped), and for a finished run ``final.safetensors`` and ``serving.json``, the
server's segment for split inference (``slperf.slserver.served_models``). The rules that keep a run from being lost:

- **At start-up** (``recover``) the server first removes the temporary files that writes cut short by a crash
  left in ``runs_dir`` and in each run folder (``fsutil.remove_stale_temp_files``: only ``atomic_write``'s own
  names). Then a folder with a ``config.yaml`` and no ``state.json`` is a run the server died in. The newest
  such run continues: from its checkpoint, or, if the server died before the first checkpoint, from round 0.
  One that cannot (its config no longer loads) is marked failed, saying why, in ``state.json`` and as the
  server's current run, so ``slperf status`` and a follower see it. Older unfinished runs are marked failed too:
  the server runs one run at a time, so a newer one means they were abandoned.
- **Records after the last checkpoint are dropped** when a run continues (all of them when there is no
  checkpoint), so no round is counted twice; a torn last line of ``metrics.jsonl`` is cut off and logged; a
  damaged line elsewhere fails the run with an error naming the file and the line.
- **A start under a run id that exists is refused** (``RunExists``, ALREADY_EXISTS on the wire): the current run,
  a queued one, or any folder in ``runs_dir``, so a new run never writes into an old run's folder (a failed run's
  ``state.json`` once got overwritten that way). Only a restart continues a folder (``resume``); one whose
  checkpoint belongs to another config is refused there too and nothing is written into it.
- **Runs queue** (FIFO): a start while a run is going is queued and begins when the one before it ends. A queued run
  reserves its folder at once, with ``queued.json`` (its config and when it was queued) and nothing else; the marker
  goes once the run writes its ``config.yaml``. At start-up, after the unfinished run is dealt with, the queued
  folders are queued again in their order, so a restart loses no queued run. Removing a queued run (``stop``)
  marks it stopped in its ``state.json``.
- **A run in which no client evaluated in its last round fails**, saying so, instead of finishing with a test
  accuracy of 0 that nobody measured.
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
from slperf.common.fsutil import remove_stale_temp_files
from slperf.common.paradigms import registry as paradigms
from slperf.common.paradigms.base import ClientGone, ClientHandle, Disagreement, ParadigmSpec, ServerParadigm
from slperf.common.paradigms.kit.aggregate import non_finite
from slperf.common.privacy.defenses.accounting import defense_figures, merge_figures
from slperf.common.privacy.observer import PrivacyObserver
from slperf.common.protocol.types import RunState
from slperf.common.security.errors import TLSConfigError
from slperf.slserver.checkpoint import load_checkpoint, save_checkpoint
from slperf.slserver.compute import ComputeContext, StepObserver
from slperf.slserver.fed_link import FedServerUnavailable, GrpcFedServerLink
from slperf.slserver.proxy import ClientProxy
from slperf.slserver.recorder import Record, RunRecorder
from slperf.slserver.run_folder import MetricsError, RunFolder
from slperf.slserver.served_models import keep_for_inference
from slperf.slserver.sessions import SessionRegistry
from slperf.slserver.tensorboard_log import TensorBoardLog

log = logging.getLogger("slperf.server.run")


class RunFailed(Exception):
    """The run cannot go on for a reason its operator can act on (clients missing, a foreign checkpoint)."""


class RunExists(Exception):
    """A start under a run id that is taken: the current run's, a queued run's, or a folder's in ``runs_dir``."""


class RunClient(ClientHandle, Protocol):
    """A client as the coordinator uses it: the paradigm's handle, plus setting it up and releasing it."""

    async def session(self) -> object:
        """Sets the client up for the run (again, after a reconnect)."""
        ...

    async def finish(self, reason: str) -> None:
        """Tells the client the run is over; never raises for a client that is already gone."""
        ...

    def take_disagreements(self) -> list[Disagreement]:
        """The figures the client reported that the server bounded since the last call."""
        ...

    # The run's attacks' observer (``attacks:``), which the handle tells of what crosses; None: no attacks.
    observer: PrivacyObserver | None


# Makes the handle of one participant: (client id, index, registry, config, run id); ClientProxy by default.
ClientFactory = Callable[[str, int, SessionRegistry, RunConfig, str], RunClient]


@dataclass
class _Resumption:
    """What the run's folder continues from: its checkpoint (None: round 0) and the records up to it."""

    checkpoint: dict[str, Any] | None
    records: list[Record]


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
    # False once the start is refused because the folder holds another run: then nothing is written into it.
    owns_folder: bool = True
    # Why the results are not the honest participants' alone (clients dropped for what they sent, figures the
    # server bounded); non-empty: the run is degraded, which its state.json, summary and watchers say.
    degraded_reasons: list[str] = field(default_factory=list)
    resumption: _Resumption | None = field(default=None, repr=False)

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
    events: TensorBoardLog
    privacy: PrivacyObserver | None = None  # the attacks the config asks for (None: none, nothing observed)
    # Each client's messages by kind when the run began (``SessionRegistry.client_kinds``): the summary's
    # ``messages_up_by_kind`` is what they sent this server since (how a test sees no weights arrived).
    kinds_before: dict[str, dict[str, int]] = field(default_factory=dict)


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
        # Runs waiting for the current one to end, first to start first.
        self.queue: list[Run] = []
        # Told of every server computation of every run (the metrics' step histogram); None: nobody listens.
        self.step_observer: StepObserver | None = None
        self._paradigm_spec = paradigm_spec
        self._client_factory = client_factory
        # The certificates folder (``--certs``): its server_client.pem is this server's identity towards a run's fed
        # server (``fed_server:``); None (``--insecure``): a run with a fed server is refused.
        self.certs_dir: Path | None = None

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self, config: RunConfig, run_id: str | None = None) -> Run:
        """Starts a new run now, or queues it behind the current one; ``RunExists`` for a run id that is taken."""
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self._refuse_taken(run_id)
        run = Run(run_id=run_id, config=config, folder=RunFolder(self.runs_dir / run_id))
        if self.current is not None and not self.current.finished:
            run.state = RunState.QUEUED
            run.folder.write_queued({"config": config.to_dict(), "queued_at": time.time_ns()})
            self.queue.append(run)
            log.info("run %s queued behind %s (position %d)", run_id, self.current.run_id, len(self.queue))
            return run
        self._launch(run)
        return run

    def find(self, run_id: str) -> Run | None:
        """The current run or a queued one by id; the current run for an empty id."""
        if not run_id:
            return self.current
        for run in (self.current, *self.queue):
            if run is not None and run.run_id == run_id:
                return run
        return None

    def _refuse_taken(self, run_id: str) -> None:
        if self.find(run_id) is not None:
            raise RunExists(f"run id {run_id!r} is taken by a run on this server; use a new run id")
        if (self.runs_dir / run_id).exists():
            raise RunExists(f"run id {run_id!r} already has a folder in {self.runs_dir}; use a new run id")

    def _launch(self, run: Run) -> None:
        run.state = RunState.PENDING
        run.task = asyncio.create_task(self._execute(run), name=f"run-{run.run_id}")
        self.current = run

    def _advance(self) -> None:
        """Starts the first queued run once the current one has ended (never while it is still going)."""
        if self.queue and (self.current is None or self.current.finished):
            run = self.queue.pop(0)
            log.info("run %s starts: the run before it ended", run.run_id)
            self._launch(run)

    def recover(self) -> Run | None:
        """At server start-up, before any run: removes crashed writes' temporary files, continues the newest
        unfinished run (or marks it failed, saying why) and marks older unfinished ones failed. The run that
        continues or failed is ``current``; None when there is none (see the module docstring for the rules)."""
        self._remove_stale_temp_files()
        unfinished = self._unfinished()
        if not unfinished:
            self._requeue()
            return self.current
        newest, *older = unfinished
        for folder in older:
            reason = f"not resumed: the server resumed the newer unfinished run {newest.name}; start this one again "
            reason += "under a new run id"
            RunFolder(folder).write_state({"state": RunState.FAILED, "error": reason})
            log.warning("run %s: %s", folder.name, reason)
        run = self.resume(newest)
        self._requeue()
        return run

    def find_resumable(self) -> Path | None:
        """The newest folder with a config but no final state: a run the server died in, before or after its
        first checkpoint."""
        unfinished = self._unfinished()
        return unfinished[0] if unfinished else None

    def resume(self, folder: Path) -> Run:
        """Continues the run in ``folder`` under its own config; one whose config no longer loads is not started
        but marked failed with the reason (in its folder and as ``current``), so it does not vanish."""
        try:
            config, _ = config_from_mapping(yaml.safe_load((folder / "config.yaml").read_text()), source=str(folder))
        except (ConfigError, OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            return self._failed_at_restart(folder, f"its config cannot be used: {exc}")
        if (folder / "checkpoint.pt").exists():
            log.info("run %s resumes from its last checkpoint", folder.name)
        else:
            log.info("run %s restarts from round 0: the server stopped before its first checkpoint", folder.name)
        run = Run(run_id=folder.name, config=config, folder=RunFolder(folder))
        self._launch(run)
        return run

    def _requeue(self) -> None:
        """Queues again, in their order, the runs that were queued when the server stopped (``queued.json``, no
        ``config.yaml``); one whose config no longer loads is marked failed, saying why. Starts the first when no
        run is going."""
        if not self.runs_dir.is_dir():
            return
        queued: list[tuple[int, str, RunConfig, RunFolder]] = []
        for path in sorted(self.runs_dir.iterdir()):
            if not path.is_dir() or (path / "config.yaml").exists() or (path / "state.json").exists():
                continue
            folder = RunFolder(path)
            try:
                marker = folder.read_queued()
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                self._fail_queued(folder, f"its queue entry cannot be read: {exc}")
                continue
            try:
                config, _ = config_from_mapping(marker.get("config") or {}, source=str(folder.queued_path))
            except ConfigError as exc:
                self._fail_queued(folder, f"its config cannot be used: {exc}")
                continue
            queued_at = marker.get("queued_at")
            queued.append((queued_at if type(queued_at) is int else 0, path.name, config, folder))
        for _, run_id, config, folder in sorted(queued, key=lambda q: (q[0], q[1])):
            self.queue.append(Run(run_id=run_id, config=config, folder=folder, state=RunState.QUEUED))
            log.info("run %s is queued again after the server restart", run_id)
        self._advance()

    def _fail_queued(self, folder: RunFolder, why: str) -> None:
        error = f"cannot queue run {folder.path.name} again after a server restart: {why}"
        log.error("%s", error)
        folder.write_state({"state": RunState.FAILED, "error": error})

    def _failed_at_restart(self, folder: Path, why: str) -> Run:
        """The run in ``folder``, which cannot continue, as a failed run: in its folder and as ``current``."""
        # The Control service shows a run's paradigm and rounds: those written in the config where they can be read.
        raw = _raw_mapping(folder / "config.yaml")
        shown = RunConfig(
            paradigm=raw["paradigm"] if isinstance(raw.get("paradigm"), str) else "unknown",
            epochs=raw["epochs"] if type(raw.get("epochs")) is int else 0,
        )
        error = f"cannot restart run {folder.name} after a server restart: {why}"
        run = Run(run_id=folder.name, config=shown, folder=RunFolder(folder), state=RunState.FAILED, error=error)
        log.error("%s", run.error)
        try:
            run.folder.write_state({"state": run.state, "error": run.error})
        except OSError as exc:  # a full disk, say: the run is still reported failed, and tried again next start
            log.error("run %s: cannot record its failed state: %s", run.run_id, exc)
        self.current = run
        return run

    def _unfinished(self) -> list[Path]:
        """Folders with a config and no final state, the most recently active first."""
        if not self.runs_dir.is_dir():
            return []
        folders = [
            p
            for p in self.runs_dir.iterdir()
            if p.is_dir() and (p / "config.yaml").is_file() and not (p / "state.json").exists()
        ]

        def last_active(folder: Path) -> float:
            files = (folder / name for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt"))
            return max(f.stat().st_mtime for f in files if f.exists())

        return sorted(folders, key=lambda p: (last_active(p), p.name), reverse=True)

    def _remove_stale_temp_files(self) -> None:
        if not self.runs_dir.is_dir():
            return
        folders = [self.runs_dir, *(p for p in self.runs_dir.iterdir() if p.is_dir() and not p.is_symlink())]
        for folder in folders:
            try:
                removed = remove_stale_temp_files(folder)
            except OSError as exc:  # an unreadable folder is the operator's to fix; it must not stop the server
                log.warning("cannot clean temporary files in %s: %s", folder, exc)
                continue
            for path in removed:
                log.info("removed %s, left by a write that a crash cut short", path)

    async def stop(self, run: Run, reason: str = "operator") -> None:
        run.stop_reason = reason
        if run in self.queue:  # never started: removed from the queue, recorded as stopped
            self.queue.remove(run)
            run.state, run.error = RunState.STOPPED, "removed from the queue by the operator"
            run.folder.write_state({"state": run.state, "error": run.error})
            run.folder.clear_queued()
            run.publish("state", {"state": run.state, "error": run.error})
            return
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
        prepared: _Prepared | None = None
        try:
            spec = self._paradigm_spec(run.config.paradigm)
            dataset = DATASETS[run.config.dataset]
            clients = await self._gather_clients(run)
            prepared = await self._prepare(run, spec, dataset.num_classes, tuple(dataset.input_shape), clients, started)
            await self._rounds(run, prepared, clients)
            await self._finish(run, prepared)
            await keep_for_inference(
                run.folder.path, run.run_id, run.config, prepared.paradigm, clients, prepared.ctx.compute
            )
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
            if prepared is not None:
                await asyncio.to_thread(prepared.events.close)
                if isinstance(prepared.ctx.fed_server, GrpcFedServerLink):
                    await prepared.ctx.fed_server.close()
            run.resumption = None
            final: dict[str, Any] = {"state": run.state, "error": run.error}
            if run.degraded_reasons:  # absent from the state of a run nobody degraded
                final.update(degraded=True, degraded_reasons=run.degraded_reasons)
            if run.state.final and run.owns_folder:
                # A final state marks the folder as not resumable; an interrupted or killed server writes none.
                run.folder.write_state(final)
            run.publish("state", final)
            if run.state is not RunState.INTERRUPTED:  # a server shutting down starts nothing new
                self._advance()

    async def _gather_clients(self, run: Run) -> list[RunClient]:
        """Claims the run folder (refused when it holds another run, before anything is written there), records
        the config, then waits for the run's participants; their handles, in client order."""
        run.resumption = await asyncio.to_thread(self._claim_folder, run)
        run.folder.write_config(run.config.to_dict())
        run.folder.clear_queued()  # config.yaml now says the run exists; a restart resumes it, not queues it
        run.state = RunState.WAITING_FOR_CLIENTS
        run.publish("state", {"state": run.state})
        ids = await self._participants(run.config)

        def handles() -> list[RunClient]:
            return [self._client_factory(cid, i, self.registry, run.config, run.run_id) for i, cid in enumerate(ids)]

        # Off the event loop: a handle derives its client's declared exchange, which may build the model once.
        return await asyncio.to_thread(handles)

    async def _participants(self, config: RunConfig) -> list[str]:
        wanted = config.participant_ids()
        timeout = config.connect_timeout or config.client_timeout
        try:
            if wanted:
                await self.registry.wait_for(lambda s: all(i in s for i in wanted), timeout)
                return wanted
            await self.registry.wait_for(lambda s: len(s) >= config.clients, timeout)
        except TimeoutError:
            have = sorted(self.registry.sessions)
            raise RunFailed(
                f"only {len(have)} of {config.clients} clients connected within {timeout:.0f} s (connect_timeout) "
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
        ctx = ComputeContext(config, run.run_id, self.executor, self.step_observer)
        if config.fed_server:
            try:
                ctx.fed_server = GrpcFedServerLink(config, run.run_id, self.certs_dir)
            except (FedServerUnavailable, TLSConfigError) as exc:
                raise RunFailed(f"cannot reach the run's fed server: {exc}") from None
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
        privacy = None
        if config.attacks:
            privacy = await ctx.compute(PrivacyObserver, config, input_shape, num_classes, run.folder.path)
            for client in clients:
                client.observer = privacy
        events = await asyncio.to_thread(TensorBoardLog, run.folder.path, first_round)
        run.state = RunState.RUNNING
        ids = [c.client_id for c in clients]
        run.publish("state", {"state": run.state, "clients": ids})
        log.info("run %s: %s with %s on %s", run.run_id, config.paradigm, ", ".join(ids), config.dataset)
        kinds = {cid: self.registry.client_kinds(cid) for cid in ids}
        return _Prepared(ctx, paradigm, recorder, first_round, events, privacy, kinds)

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

    def _claim_folder(self, run: Run) -> _Resumption:
        """What the run continues from, read from its folder: the checkpoint if there is one (refused when it is of
        another config), and the records up to it; records after it (all, without one) and a torn tail are cut
        off ``metrics.jsonl``, so no round is counted twice. Runs off the event loop (a checkpoint is large)."""
        path = run.folder.checkpoint_path
        checkpoint = None
        if path.exists():
            try:
                checkpoint = load_checkpoint(path)
            except ValueError as exc:
                raise RunFailed(str(exc)) from None
            if checkpoint.get("config") != run.config.to_dict():
                run.owns_folder = False
                raise RunFailed(f"{path} belongs to a run with another config; use a new run id")
        last = int(checkpoint["round"]) if checkpoint is not None else -1
        try:
            records = run.folder.repair_metrics()
        except MetricsError as exc:
            raise RunFailed(str(exc)) from None
        kept = [r for r in records if r["round"] <= last]
        if kept != records:
            run.folder.rewrite_metrics(kept)
        return _Resumption(checkpoint, kept)

    def _resume(self, run: Run, paradigm: ServerParadigm) -> tuple[int, list[Record], float]:
        """Loads what ``_claim_folder`` found into ``paradigm``: the first round to train, the records kept and the
        run's elapsed time before this server (a restart loses no completed round)."""
        resumption, run.resumption = run.resumption, None
        if resumption is None or resumption.checkpoint is None:
            return 0, resumption.records if resumption else [], 0.0
        state = resumption.checkpoint
        paradigm.load_state_dict(state["paradigm"])
        log.info("run %s resumes after round %d", run.run_id, state["round"])
        return int(state["round"]) + 1, resumption.records, float(state.get("elapsed", 0.0))

    async def _rounds(self, run: Run, prepared: _Prepared, clients: list[RunClient]) -> None:
        """Every remaining round: train, evaluate, record, checkpoint, publish."""
        paradigm, recorder = prepared.paradigm, prepared.recorder
        for rnd in range(prepared.first_round, run.config.epochs):
            run.round = rnd
            meter = recorder.start_round(rnd, [c.client_id for c in clients])
            result = await paradigm.train_round(rnd, clients)
            meter.training_done()
            evaluation = await paradigm.evaluate(rnd, clients)
            bounded = [d for c in clients for d in c.take_disagreements()]
            record = recorder.finish_round(meter, result, evaluation, bounded)
            if prepared.privacy is not None:  # after the round: the attacks never slow its training
                record["privacy"] = await prepared.ctx.compute(prepared.privacy.finish_round, rnd)
            if run.config.defenses:  # which defenses at which strength, and their epsilon, beside the attacks'
                figures = await prepared.ctx.compute(defense_figures, run.config, recorder.records)
                record["privacy"] = merge_figures(record.get("privacy"), figures)
                record["defenses"] = run.config.defenses
            run.test_accuracy = record["test_accuracy"]
            run.degraded_reasons = recorder.degraded_reasons
            for reason in run.degraded_reasons[len(run.degraded_reasons) - _new_reasons(record) :]:
                log.warning("run %s degraded: %s", run.run_id, reason)
            model = paradigm.model_state()
            poisoned = {segment: bad for segment, state in model.items() if (bad := non_finite(state))}
            if poisoned:  # never checkpointed, never resumed from
                raise RunFailed(
                    f"round {rnd}: the server's model holds non-finite weights {poisoned}; not checkpointed"
                )
            run.folder.append_metrics(record)
            await asyncio.to_thread(prepared.events.write_round, record)
            checkpoint = {
                "run_id": run.run_id,
                "round": rnd,
                "config": run.config.to_dict(),
                "paradigm": paradigm.state_dict(),
                "model": model,
                "elapsed": recorder.elapsed(),
            }
            await prepared.ctx.compute(save_checkpoint, run.folder.checkpoint_path, checkpoint)
            run.publish("round", record)

    async def _finish(self, run: Run, prepared: _Prepared) -> None:
        """The run's summary and plots, once every round is done; a run whose last round nobody evaluated fails."""
        config = run.config
        records = prepared.recorder.records
        if not records or not records[-1].get("test_samples"):
            last = f"round {records[-1]['round'] + 1}" if records else "no round"
            raise RunFailed(
                f"no client evaluated in the run's last round ({last}: 0 test samples), so it has no test accuracy; "
                "the clients holding the test data dropped out or sat the evaluation out"
            )
        run.summary = prepared.recorder.summary()
        run.summary.update(prepared.paradigm.describe())
        # This process's compute time for the run (a resumed run's earlier process is not counted).
        run.summary["server_compute_seconds"] = prepared.ctx.busy_seconds
        if config.attacks or config.defenses:  # the last round's leakage figures beside its accuracy
            run.summary["privacy"] = records[-1].get("privacy", {})
        if config.defenses:
            run.summary["defenses"] = config.defenses
        run.summary["messages_up_by_kind"] = {
            cid: _since(self.registry.client_kinds(cid), before)
            for cid, before in sorted(prepared.kinds_before.items())
        }
        run.folder.write_summary(run.summary)
        await prepared.ctx.compute(
            run.folder.write_plots, prepared.recorder.records, f"{config.paradigm} on {config.dataset}"
        )


def _since(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {kind: n - before.get(kind, 0) for kind, n in sorted(now.items()) if n > before.get(kind, 0)}


def _new_reasons(record: dict[str, Any]) -> int:
    """How many of the run's degraded reasons the round's record added (logged once each)."""
    return len(record.get("misbehaved", {})) + len(record.get("disagreements", []))


def _raw_mapping(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` as written, or an empty one when there is none to read."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}
