"""The client daemon's Prometheus endpoint (``slperf client --metrics-address HOST:PORT``): what a silo's operator
watches live of its own daemon.

The daemon always keeps these figures (a few counters, and two clock readings per link call); they are served only
with ``--metrics-address``. Every metric lives in a ``CollectorRegistry`` of this daemon's own, never
prometheus_client's global one. Nothing polls: what already exists (the session's ``ByteCounter``, the connection
state, the current run and phase) is read when Prometheus scrapes, by a custom collector; what exists nowhere else
(reconnects, errors, steps and their compute time) is counted as it happens, from hooks the daemon and its session
link call.

Metrics (all prefixed ``slperf_client_``):

- ``info`` (1, by ``client`` and ``version``): which daemon this is.
- ``connection_state`` (gauge, by ``state``: ``connecting`` (dialling, before the server's Welcome), ``connected``,
  ``waiting`` (backing off before the next attempt)): 1 for the state the daemon is in, 0 for the others.
- ``sessions_total`` (counter): sessions that reached the server's Welcome; ``reconnects_total`` (counter): times
  the daemon went back to dialling after a session ended or an attempt failed.
- ``bytes_total`` / ``messages_total`` (counters, by ``direction``: ``up`` to the server, ``down`` from it): exact
  serialized bytes and envelopes over all of the daemon's sessions since it started.
- ``run_info`` (1, by ``run_id``, ``paradigm`` and ``phase``: ``train``, ``eval``, or ``idle`` between passes) and
  ``run_round`` (by ``run_id``): the run the daemon is set up for, and the round of its current or last pass.
- ``steps_total`` (counter, by ``phase``): batches of the passes the daemon completed (the paradigm's own count).
- ``compute_seconds_total`` (counter, by ``phase``): the daemon's own time in passes, i.e. the pass's wall time less
  the time spent waiting on the link (sending cut tensors, awaiting replies), for every paradigm (FedAvg's local
  passes exchange nothing, so all their time is compute).
- ``pass_cpu_seconds_total`` (counter, by ``phase``): the daemon process's CPU time (user + system, all threads)
  in the same stretches of its passes as ``compute_seconds_total`` (not while it waits on the link). Over that
  figure it is the share of a core the daemon got while computing: about 1 for a free core and one torch thread,
  about the limit for a client in a container limited by ``client_resources`` (docs/containers.md), less on a
  loaded machine.
- ``step_seconds`` (histogram, by ``phase``): the same time, per step that crosses the cut. A step's time runs from
  the end of the previous step's last wait on the link (the pass's start, for the first step) to the end of its own
  last wait, less the waits within; the time after the pass's last wait counts in the last step. So a step's figure
  holds its data loading and forward and the previous step's backward (the last step also its own). Counts and sums
  are exact: ``_count`` is the step progress of the paradigms that exchange cut tensors, ``_sum`` their compute.
- ``errors_total`` (counter, by ``code`` and ``where``): sessions or connection attempts that ended with a non-OK
  status (``where="session"``), in-stream error reports from the server (``received``) and sent to it (``sent``),
  and bad messages from the server that were dropped (``dropped``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from slperf import __version__
from slperf.common.metrics_http import MetricsServer, serve_metrics
from slperf.common.protocol.types import Phase
from slperf.common.wire.framing import ByteCounter

# A client step (a bottom's forward and backward on a CPU) takes from well under a millisecond to seconds.
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"  # dialling, or the Hello is out and no Welcome came yet
    CONNECTED = "connected"  # in a session the server welcomed
    WAITING = "waiting"  # backing off before the next attempt


def phase_label(phase: Phase) -> str:
    return "train" if phase == Phase.TRAIN else "eval"


class StepClock:
    """Splits one pass's time into the daemon's own (computing) and the link's (waiting), step by step (see the
    module docstring for what a step's figure holds). The session link calls ``link_call`` as it starts to send or
    await something for a step and ``link_done`` when that returns; the daemon calls ``finish`` when the pass is
    over. Everything runs on the event loop, so nothing here needs a lock."""

    def __init__(
        self,
        observe: Callable[[float], None],
        now: Callable[[], float] = time.perf_counter,
        cpu_now: Callable[[], float] = time.process_time,
    ):
        self._observe = observe
        self._now = now
        self._cpu_now = cpu_now
        self._cpu_since = cpu_now()
        self._busy_since = now()
        self._step: int | None = None
        self._pending: float | None = None  # the current step's time so far, observed when the next one starts
        self.total = 0.0  # the pass's compute time so far
        self.cpu = 0.0  # the process's CPU time in the same stretches (all its threads)

    def _busy(self) -> float:
        chunk = self._now() - self._busy_since
        self.total += chunk
        self.cpu += max(self._cpu_now() - self._cpu_since, 0.0)
        return chunk

    def link_call(self, step: int) -> None:
        chunk = self._busy()
        if step != self._step:
            if self._pending is not None:
                self._observe(self._pending)
            self._step, self._pending = step, chunk
        else:
            self._pending = (self._pending or 0.0) + chunk

    def link_done(self) -> None:
        self._busy_since = self._now()
        self._cpu_since = self._cpu_now()

    def finish(self) -> float:
        """The pass is over: its last step is observed (with the time after its last link call); returns the
        pass's compute time."""
        chunk = self._busy()
        if self._pending is not None:
            self._observe(self._pending + chunk)
            self._pending = None
        return self.total


@dataclass
class _Run:
    run_id: str
    paradigm: str
    round: int = 0
    phase: str = "idle"


@dataclass(frozen=True)
class _Traffic:
    """The current session's counter (read live) plus the totals of the daemon's ended sessions. Replaced whole
    (one assignment) when a session ends, so a scrape from the HTTP thread never counts a session twice."""

    live: ByteCounter | None = None
    closed: tuple[int, int, int, int] = (0, 0, 0, 0)  # bytes up, down, messages up, down

    def totals(self) -> tuple[int, int, int, int]:
        up, down, m_up, m_down = self.closed
        c = self.live
        if c is None:
            return up, down, m_up, m_down
        return up + c.up, down + c.down, m_up + c.messages_up, m_down + c.messages_down

    def then(self, live: ByteCounter | None) -> _Traffic:
        """The ended session folded into the totals, ``live`` counting from now on."""
        return _Traffic(live, self.totals())


class ClientMetrics(Collector):
    """The daemon's metrics: event counters its hooks feed, and a collector over its connection, traffic and run."""

    def __init__(self, client_id: str):
        self.client_id = client_id
        self.registry = CollectorRegistry(auto_describe=True)
        self.state = ConnectionState.CONNECTING
        self.sessions = Counter(
            "slperf_client_sessions", "Sessions that reached the server's Welcome", registry=self.registry
        )
        self.reconnects = Counter(
            "slperf_client_reconnects",
            "Times the daemon went back to dialling after a session ended or an attempt failed",
            registry=self.registry,
        )
        self.errors = Counter(
            "slperf_client_errors",
            "Sessions ended with a non-OK status (where=session), error reports received from the server (received) "
            "and sent to it (sent), bad messages from the server dropped (dropped)",
            ["code", "where"],
            registry=self.registry,
        )
        self.steps = Counter(
            "slperf_client_steps", "Batches of the passes this daemon completed", ["phase"], registry=self.registry
        )
        self.compute = Counter(
            "slperf_client_compute_seconds",
            "The daemon's own time in passes: wall time less the waits on the link",
            ["phase"],
            registry=self.registry,
        )
        self.pass_cpu = Counter(
            "slperf_client_pass_cpu_seconds",
            "The daemon process's CPU time (user + system) in its passes, less the waits on the link",
            ["phase"],
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "slperf_client_step_seconds",
            "The daemon's own time per step that crosses the cut (from the previous step's last wait on the link to "
            "this one's, less the waits)",
            ["phase"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self._traffic = _Traffic()
        self._run: _Run | None = None
        self.registry.register(self)

    # -- hooks the daemon and its session link call at events ------------------------------------------------
    def dialling(self) -> None:
        self.state = ConnectionState.CONNECTING

    def session_opened(self, counter: ByteCounter) -> None:
        """A session stream opened; ``counter`` is the one its endpoint adds every envelope to."""
        self._traffic = self._traffic.then(counter)

    def welcomed(self) -> None:
        self.state = ConnectionState.CONNECTED
        self.sessions.inc()

    def session_closed(self) -> None:
        self._traffic = self._traffic.then(None)

    def reconnecting(self) -> None:
        self.state = ConnectionState.WAITING
        self.reconnects.inc()

    def error(self, code: grpc.StatusCode, where: str) -> None:
        self.errors.labels(code=code.name, where=where).inc()

    def run_set_up(self, run_id: str, paradigm: str) -> None:
        self._run = _Run(run_id, paradigm)

    def run_over(self) -> None:
        self._run = None

    def pass_started(self, round: int, phase: Phase) -> StepClock:
        """A train or eval pass of the current run begins: the clock its session link reports link calls to."""
        if self._run is not None:
            self._run.round, self._run.phase = round, phase_label(phase)
        histogram = self.step_seconds.labels(phase=phase_label(phase))
        return StepClock(histogram.observe)

    def pass_ended(self, phase: Phase, clock: StepClock, steps: int | None) -> None:
        """The pass is over: ``steps`` batches done (None: it failed; its compute time still counts)."""
        seconds = clock.finish()
        label = phase_label(phase)
        self.compute.labels(phase=label).inc(seconds)
        self.pass_cpu.labels(phase=label).inc(max(clock.cpu, 0.0))
        if steps is not None:
            self.steps.labels(phase=label).inc(steps)
        if self._run is not None:
            self._run.phase = "idle"

    # -- read at scrape time -----------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("slperf_client_info", "This client daemon (1)", labels=["client", "version"])
        info.add_metric([self.client_id, __version__], 1)
        yield info
        state = GaugeMetricFamily(
            "slperf_client_connection_state", "1 for the daemon's connection state, 0 for the others", labels=["state"]
        )
        for s in ConnectionState:
            state.add_metric([s.value], 1 if s == self.state else 0)
        yield state
        up, down, m_up, m_down = self._traffic.totals()
        nbytes = CounterMetricFamily(
            "slperf_client_bytes",
            "Exact serialized bytes on the daemon's sessions since it started",
            labels=["direction"],
        )
        messages = CounterMetricFamily(
            "slperf_client_messages", "Envelopes on the daemon's sessions since it started", labels=["direction"]
        )
        nbytes.add_metric(["up"], up)
        nbytes.add_metric(["down"], down)
        messages.add_metric(["up"], m_up)
        messages.add_metric(["down"], m_down)
        yield from (nbytes, messages)
        run_info = GaugeMetricFamily(
            "slperf_client_run_info", "The run this daemon is set up for (1)", labels=["run_id", "paradigm", "phase"]
        )
        rnd = GaugeMetricFamily(
            "slperf_client_run_round", "Round of the current or last pass of the run", labels=["run_id"]
        )
        run = self._run
        if run is not None:
            run_info.add_metric([run.run_id, run.paradigm, run.phase], 1)
            rnd.add_metric([run.run_id], run.round)
        yield from (run_info, rnd)

    def describe(self) -> list[Metric]:
        return []  # the families vary with the run; nothing to check at registration

    def serve(self, address: str) -> MetricsServer:
        """Serves ``/metrics`` on ``address`` (HOST:PORT, port 0 = any) from a thread of prometheus_client's."""
        return serve_metrics(self.registry, address)
