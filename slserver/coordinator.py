"""The run coordinator: waits for the run's clients, drives the paradigm round by round, evaluates,
checkpoints after every round, records metrics, and publishes progress to watchers.

It knows nothing about any particular paradigm: it asks the registry for the paradigm's server half and
talks to clients only through ``ClientProxy`` handles.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from slperf.common.config import ConfigError, RunConfig, config_from_mapping
from slperf.common.data.registry import DATASETS
from slperf.common.paradigms import registry as paradigms
from slperf.common.paradigms.base import ClientGone, RoundResult
from slperf.common.protocol.types import RunState
from slperf.slserver.run_folder import RunFolder
from slperf.slserver.checkpoint import load_checkpoint, save_checkpoint
from slperf.slserver.proxy import ClientProxy
from slperf.slserver.sessions import SessionRegistry

log = logging.getLogger("slperf.server.run")
T = TypeVar("T")


class RunFailed(Exception):
    pass


@dataclass
class ComputeContext:
    """What a server paradigm gets: the run's config and a way to compute off the event loop."""

    config: RunConfig
    run_id: str
    executor: concurrent.futures.Executor

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))


@dataclass
class Run:
    run_id: str
    config: RunConfig
    folder: RunFolder
    state: RunState = RunState.PENDING
    round: int = 0
    error: str = ""
    test_accuracy: float = 0.0
    summary: dict[str, Any] | None = None
    task: asyncio.Task | None = None
    stop_reason: str = ""
    watchers: list[asyncio.Queue] = field(default_factory=list)

    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        for queue in list(self.watchers):
            queue.put_nowait((kind, payload))

    @property
    def finished(self) -> bool:
        return self.state.ended


class RunCoordinator:
    def __init__(self, registry: SessionRegistry, runs_dir: Path, executor: concurrent.futures.Executor):
        self.registry = registry
        self.runs_dir = Path(runs_dir)
        self.executor = executor
        self.current: Run | None = None

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
        candidates = [p for p in self.runs_dir.iterdir()
                      if (p / "checkpoint.pt").exists() and (p / "config.yaml").exists() and not (p / "state.json").exists()]
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

    async def _participants(self, config: RunConfig) -> list[str]:
        wanted = config.participant_ids()
        timeout = config.client_timeout
        try:
            if wanted:
                await self.registry.wait_for(lambda s: all(i in s for i in wanted), timeout)
                return wanted
            await self.registry.wait_for(lambda s: len(s) >= config.clients, timeout)
        except asyncio.TimeoutError:
            have = sorted(self.registry.sessions)
            raise RunFailed(f"only {len(have)} of {config.clients} clients connected within {timeout:.0f} s "
                            f"(connected: {', '.join(have) or 'none'})") from None
        return sorted(self.registry.sessions)[: config.clients]

    async def _execute(self, run: Run) -> None:
        config = run.config
        started = time.monotonic()
        proxies: list[ClientProxy] = []
        try:
            spec = paradigms.get(config.paradigm)
            dataset = DATASETS[config.dataset]
            run.folder.write_config(config.to_dict())
            run.state = RunState.WAITING_FOR_CLIENTS
            run.publish("state", {"state": run.state})
            ids = await self._participants(config)
            proxies = [ClientProxy(cid, i, self.registry, config, run.run_id) for i, cid in enumerate(ids)]
            ctx = ComputeContext(config, run.run_id, self.executor)
            paradigm = await ctx.compute(spec.server, config, ctx, dataset.num_classes, tuple(dataset.input_shape))
            first_round, records, elapsed_before = self._resume(run, paradigm)
            await asyncio.gather(*(p.session() for p in proxies))
            run.state = RunState.RUNNING
            run.publish("state", {"state": run.state, "clients": ids})
            log.info("run %s: %s with %s on %s", run.run_id, config.paradigm, ", ".join(ids), config.dataset)
            for rnd in range(first_round, config.epochs):
                run.round = rnd
                record = await self._round(run, paradigm, proxies, rnd, started - elapsed_before)
                records.append(record)
                run.test_accuracy = record["test_accuracy"]
                run.folder.append_metrics(record)
                checkpoint = {"run_id": run.run_id, "round": rnd, "config": config.to_dict(),
                              "paradigm": paradigm.state_dict(), "model": paradigm.model_state(),
                              "elapsed": time.monotonic() - started + elapsed_before}
                await ctx.compute(save_checkpoint, run.folder.checkpoint_path, checkpoint)
                run.publish("round", record)
            run.summary = self._summary(run, records, time.monotonic() - started + elapsed_before)
            run.summary.update(paradigm.describe())
            run.folder.write_summary(run.summary)
            await ctx.compute(run.folder.write_plots, records, f"{config.paradigm} on {config.dataset}")
            run.state = RunState.FINISHED
        except asyncio.CancelledError:
            if run.stop_reason == "operator":
                run.state, run.error = RunState.STOPPED, "stopped by the operator"
            else:
                run.state, run.error = RunState.INTERRUPTED, "server shut down; the run resumes from its checkpoint on restart"
            raise
        except (RunFailed, ClientGone) as exc:
            run.state, run.error = RunState.FAILED, str(exc)
            log.error("run %s failed: %s", run.run_id, exc)
        except Exception as exc:  # a bug must end the run visibly, not kill the server
            run.state, run.error = RunState.FAILED, f"{type(exc).__name__}: {exc}"
            log.exception("run %s failed", run.run_id)
        finally:
            await asyncio.gather(*(p.finish(run.state) for p in proxies), return_exceptions=True)
            if run.state.final:
                # A final state marks the folder as not resumable; an interrupted or killed server writes none.
                run.folder.write_state({"state": run.state, "error": run.error})
            run.publish("state", {"state": run.state, "error": run.error})

    def _resume(self, run: Run, paradigm) -> tuple[int, list[dict[str, Any]], float]:
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

    async def _round(self, run: Run, paradigm, proxies: list[ClientProxy], rnd: int, t0: float) -> dict[str, Any]:
        round_start = time.monotonic()
        before = {p.client_id: self._bytes(p.client_id) for p in proxies}
        result: RoundResult = await paradigm.train_round(rnd, proxies)
        train_bytes = {p.client_id: self._bytes(p.client_id) for p in proxies}
        evaluation = await paradigm.evaluate(rnd, proxies)
        after = {p.client_id: self._bytes(p.client_id) for p in proxies}
        per_client = {}
        for p in proxies:
            cid = p.client_id
            summary = result.per_client.get(cid)
            per_client[cid] = {
                "bytes_up": train_bytes[cid][0] - before[cid][0],
                "bytes_down": train_bytes[cid][1] - before[cid][1],
                "eval_bytes_up": after[cid][0] - train_bytes[cid][0],
                "eval_bytes_down": after[cid][1] - train_bytes[cid][1],
                "samples": summary.samples if summary else 0,
                "train_loss": summary.mean_loss if summary else None,
                "train_accuracy": summary.accuracy if summary else None,
            }
        totals = self._cumulative(run, per_client)
        return {
            "round": rnd,
            "test_accuracy": evaluation.accuracy,
            "test_loss": evaluation.loss,
            "test_samples": evaluation.samples,
            "train_loss": result.train_loss,
            "train_accuracy": result.train_accuracy,
            "participants": result.participants,
            "dropped": result.dropped,
            "round_seconds": time.monotonic() - round_start,
            "wall_seconds": time.monotonic() - t0,
            "bytes_up": totals[0],
            "bytes_down": totals[1],
            "per_client": per_client,
            **({"extra": result.extra} if result.extra else {}),
            **({"eval_extra": evaluation.extra} if evaluation.extra else {}),
        }

    def _bytes(self, client_id: str) -> tuple[int, int]:
        """Cumulative bytes of a client over all its sessions (a reconnect starts a new counter)."""
        return self.registry.client_bytes(client_id)

    @staticmethod
    def _cumulative(run: Run, per_client: dict[str, dict[str, Any]]) -> tuple[int, int]:
        previous = run.folder.read_metrics()
        up = sum(r["bytes_up"] for r in previous[-1:]) if previous else 0
        down = sum(r["bytes_down"] for r in previous[-1:]) if previous else 0
        for figures in per_client.values():
            up += figures["bytes_up"] + figures["eval_bytes_up"]
            down += figures["bytes_down"] + figures["eval_bytes_down"]
        return up, down

    @staticmethod
    def _summary(run: Run, records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
        config = run.config
        per_client: dict[str, dict[str, int]] = {}
        for record in records:
            for cid, figures in record["per_client"].items():
                agg = per_client.setdefault(cid, {"bytes_up": 0, "bytes_down": 0, "train_bytes_up": 0,
                                                  "train_bytes_down": 0, "samples": 0})
                agg["bytes_up"] += figures["bytes_up"] + figures["eval_bytes_up"]
                agg["bytes_down"] += figures["bytes_down"] + figures["eval_bytes_down"]
                agg["train_bytes_up"] += figures["bytes_up"]
                agg["train_bytes_down"] += figures["bytes_down"]
                agg["samples"] += figures["samples"]
        accuracies = [r["test_accuracy"] for r in records]
        return {
            "run_id": run.run_id,
            "paradigm": config.paradigm,
            "dataset": config.dataset,
            "model": config.model,
            "split_layer": config.split_layer,
            "clients": config.clients,
            "client_ids": sorted(per_client),
            "partition_method": config.partition_method,
            "rounds": len(records),
            "test_accuracy": accuracies[-1] if accuracies else None,
            "best_test_accuracy": max(accuracies) if accuracies else None,
            "wall_seconds": wall,
            "bytes_up": sum(c["bytes_up"] for c in per_client.values()),
            "bytes_down": sum(c["bytes_down"] for c in per_client.values()),
            "train_bytes_up": sum(c["train_bytes_up"] for c in per_client.values()),
            "train_bytes_down": sum(c["train_bytes_down"] for c in per_client.values()),
            "per_client": per_client,
        }
