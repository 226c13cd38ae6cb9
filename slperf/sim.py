"""The simulation backend (``backend: sim``): a whole federation in one process and one asyncio loop.

The parties are the real ones. The server side is the server daemon's own objects: a ``SessionRegistry``, the
``RunCoordinator`` with its client proxies and the paradigm's server half on its compute thread, and every session
served by ``SplitLearningService.Session``. Each client is a real ``ClientDaemon`` whose conversation
(``ClientDaemon.converse``) drives the paradigm's client half. They talk through the same endpoints, serde and
framing as over gRPC, over in-memory links (``slperf.common.transport.memory``) in place of gRPC and TLS, so every
byte count is the one the network backend gives. What is left out is what a simulation has no use for: processes,
certificates and TLS, the Control service (the run is started and followed in-process), reconnects and client
state files.

Thousands of virtual clients fit because the parties share what a process of its own would load: inside
``shared_data()`` the data set is loaded once and every client's loaders keep index arrays into it
(``slperf.common.data.shared``); a client holds its segments, its optimiser state and its indices.

The run folder is the federation's (config, metrics, checkpoint, summary, plots, state), and the summary has the
keys ``run_federation``'s has, so the benchmark's rows and reports need nothing else. See docs/simulation.md for
what is identical to the federation backend and what is not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from slperf.common.config import RunConfig
from slperf.common.config_loader import load_config, load_config_text
from slperf.common.data import load_dataset
from slperf.common.data.shared import shared_data
from slperf.common.protocol.types import RunState
from slperf.common.transport.memory import MemoryLink
from slperf.slclient.daemon import ClientDaemon, ClientOptions
from slperf.slserver.coordinator import Run, RunCoordinator
from slperf.slserver.interceptors import HelloAuthorizer
from slperf.slserver.service import SplitLearningService
from slperf.slserver.sessions import SessionLimits, SessionRegistry

log = logging.getLogger("slperf.sim")

SIM_LOG = "sim.log"  # in <out_dir>/logs: what every party logged (the server's and all clients' lines)
# How long the parties get to end their sessions once the run is over (each client ends its own at Finish).
CLOSE_TIMEOUT = 60.0


class SimulationError(Exception):
    """The simulated run did not finish (failed, or a party's code raised); the message says why."""


@dataclass
class _Party:
    """One virtual client: its daemon, its link, and the two tasks serving the link's ends."""

    client_id: str
    daemon: ClientDaemon
    link: MemoryLink
    server_task: asyncio.Task[None] | None = None
    client_task: asyncio.Task[bool] | None = None


@dataclass
class Simulation:
    """A server and ``config.clients`` virtual clients in this process's running event loop."""

    config: RunConfig
    out_dir: Path
    link_capacity: int | None = None
    parties: dict[str, _Party] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)  # client id -> why its daemon stopped during the run

    def client_ids(self) -> list[str]:
        return self.config.participant_ids() or [f"c{i + 1}" for i in range(self.config.clients)]

    async def run(self, on_round: Callable[[Run, dict[str, Any]], None] | None = None) -> Run:
        """Runs the config to an end state and returns the run (its ``state``, ``error`` and ``summary``)."""
        limits = SessionLimits(max_sessions=max(SessionLimits.max_sessions, self.config.clients))
        registry = SessionRegistry(limits=limits)
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slperf-compute")
        try:
            coordinator = RunCoordinator(registry, self.out_dir, executor)
            service = SplitLearningService(registry, HelloAuthorizer(None, insecure=True))
            for cid in self.client_ids():
                self._connect(service, cid)
            run = coordinator.start(self.config)
            events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
            run.watchers.append(events)  # before the run's task first runs: no event is missed
            while not run.finished:
                kind, payload = await events.get()
                if kind == "round" and on_round is not None:
                    on_round(run, payload)
            assert run.task is not None
            await asyncio.gather(run.task, return_exceptions=True)
            await self._close()
            return run
        finally:
            await self._cancel()
            executor.shutdown(wait=True, cancel_futures=True)

    def _connect(self, service: SplitLearningService, cid: str) -> None:
        options = ClientOptions(server="sim", client_id=cid, credentials=None, once=True)
        link = MemoryLink(f"sim:{cid}", **({"capacity": self.link_capacity} if self.link_capacity else {}))
        party = _Party(cid, ClientDaemon(options), link)
        party.server_task = asyncio.create_task(_serve(service, link), name=f"sim-session-{cid}")
        party.client_task = asyncio.create_task(self._client(party), name=f"sim-client-{cid}")
        self.parties[cid] = party

    async def _client(self, party: _Party) -> bool:
        """The client daemon's conversation; its failure is this client's alone (the server drops it, as it drops
        a daemon that exits), recorded in ``lost``."""
        try:
            return await party.daemon.converse(party.link.client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.lost[party.client_id] = f"{party.client_id} stopped: {type(exc).__name__}: {exc}"
            log.error("client %s stopped: %s", party.client_id, exc, exc_info=True)
            party.link.finish(grpc.StatusCode.UNAVAILABLE, f"client {party.client_id} stopped: {exc}")
            return False

    async def _close(self) -> None:
        """Waits for every party to end its session (a client ends its stream at Finish, the server's handler then
        returns), bounded by CLOSE_TIMEOUT; what is left is cancelled by ``_cancel``."""
        tasks = [t for p in self.parties.values() for t in (p.server_task, p.client_task) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)

    async def _cancel(self) -> None:
        tasks = [t for p in self.parties.values() for t in (p.server_task, p.client_task) if t and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def _no_requests() -> AsyncIterator[Any]:
    """The handler's request iterator, which it never uses (it reads through the context)."""
    return
    yield  # pragma: no cover - makes this an async generator


async def _serve(service: SplitLearningService, link: MemoryLink) -> None:
    """Runs the server's session handler on the link's server end, ending the link with the handler's status the
    way gRPC ends a call: OK when it returns, the abort's status when it aborts, UNKNOWN when it raises."""
    try:
        await service.Session(_no_requests(), link.server)
    except grpc.aio.AbortError:
        pass  # the end's abort() has set the status
    except asyncio.CancelledError:
        link.finish(grpc.StatusCode.CANCELLED, "the simulation ended")
        raise
    except Exception as exc:
        log.exception("session handler failed")
        link.finish(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
    link.finish(grpc.StatusCode.OK)


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Every party's log lines go to ``path`` (the federation writes one log per process; here they share one), not
    to the console, which shows the progress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("slperf")
    saved = (root.level, root.propagate)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]
        handler.close()


def sim_config(config: RunConfig) -> RunConfig:
    """The config as the server would hold it after ``slperf federation`` sent it (the same YAML round trip, with
    the participant ids filled in), marked as simulated."""
    config = dataclasses.replace(config, backend="sim")
    config.client_ids = config.participant_ids() or [f"c{i + 1}" for i in range(config.clients)]
    loaded, _ = load_config_text(yaml.safe_dump(config.to_dict()), source="run config")
    return loaded


def simulate(
    config: RunConfig,
    out_dir: Path,
    *,
    on_round: Callable[[Run, dict[str, Any]], None] | None = None,
    link_capacity: int | None = None,
) -> tuple[Run, Simulation]:
    """Runs ``config`` as a simulation in a fresh event loop; the run folder goes under ``out_dir``. For callers
    that want the run itself (tests, the benchmarks); ``run_simulation`` is the command's entry point."""
    import torch

    config = sim_config(config)
    # One process for every party: the per-process thread count a federation gives each of its processes.
    torch.set_num_threads(config.torch_threads or 1)
    sim = Simulation(config, Path(out_dir), link_capacity=link_capacity)
    with shared_data(), _logs_to(Path(out_dir) / "logs" / SIM_LOG):
        load_dataset(config.dataset, config.data_dir)  # decoded into the cache once; fails early if missing
        run = asyncio.run(sim.run(on_round))
    return run, sim


def run_simulation(
    config_path: Path,
    out_dir: Path,
    *,
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``slperf federation --backend sim``: runs the config as a simulation to its end and returns the run's summary
    with the keys ``run_federation`` returns (``supervisor`` says which clients were lost; nothing restarts here).
    Raises SimulationError when the run does not finish."""
    config, warnings = load_config(config_path)
    for warning in warnings:
        echo(f"warning: {warning}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    bar: Any = None
    logs = out_dir / "logs" / SIM_LOG

    def say(message: str) -> None:
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            echo(message)

    def on_round(run: Run, record: dict[str, Any]) -> None:
        out = f" ({', '.join(record['dropped'])} sat out)" if record.get("dropped") else ""
        if bar is not None:
            bar.update(1)
            bar.set_postfix(acc=f"{100 * record['test_accuracy']:.2f}%")
            if out:
                say(f"round {record['round'] + 1}:{out}")
        else:
            accuracy = 100 * record["test_accuracy"]
            say(f"round {record['round'] + 1}/{run.config.epochs}: test accuracy {accuracy:.2f}%{out}")

    echo(
        f"simulating {config.paradigm} on {config.dataset}, {config.clients} clients in one process (in-memory "
        f"links); logs in {logs}"
    )
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=config.epochs, desc=config.paradigm, unit="round", file=sys.stderr)
    try:
        run, sim = simulate(config, out_dir, on_round=on_round)
    finally:
        if bar is not None:
            bar.close()
            bar = None
    if run.state is not RunState.FINISHED:
        reason = run.error or run.state.value
        if sim.lost:
            reason += f" (clients lost: {'; '.join(sim.lost.values())})"
        raise SimulationError(f"run {run.run_id} {run.state.value}: {reason}")
    summary: dict[str, Any] = json.loads(json.dumps(run.summary))  # as a federation's follower receives it
    summary["federation_seconds"] = time.monotonic() - started
    summary["run_dir"] = str(out_dir / run.run_id)
    summary["supervisor"] = {"restarts": {}, "lost": dict(sim.lost), "log": str(logs)}
    summary["backend"] = "sim"
    return summary
