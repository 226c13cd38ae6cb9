"""The server's Prometheus endpoint (``slperf server --metrics-address HOST:PORT``): what an operator watches live.

Every metric lives in a ``CollectorRegistry`` of this server's own (never prometheus_client's global one), so two
servers in one process (tests) do not share or collide on figures. Nothing here polls: counts that already exist
(each session's ``ByteCounter``, the session registry, the current run) are read when Prometheus scrapes, by a
custom collector; what exists nowhere else (call and in-stream errors, server compute steps) is counted as it
happens, from hooks the registry, the interceptors and the compute context call.

Metrics (all prefixed ``slperf_server_``):

- ``sessions`` (gauge, by ``state``): client sessions connected now.
- ``client_bytes_total`` / ``client_messages_total`` (counters, by ``client`` and ``direction`` up/down): exact
  serialized bytes and envelopes over all of a client's sessions since the server started.
- ``client_messages_by_kind_total`` (counter, by ``client`` and ``kind``, e.g. ``cut_tensor``, ``model_state``): the
  messages a client sent, reassembled, by kind (the run summary's ``messages_up_by_kind`` is the same count per run).
- ``errors_total`` (counter, by ``code`` and ``where``): calls the server ended with a non-OK status
  (``where="call"``: refused Hellos and credentials, Control refusals, sessions ended by the server) and in-stream
  error reports (``where="stream"``: a dropped bad message, the session goes on).
- ``run_round`` / ``run_rounds`` / ``run_test_accuracy`` (gauges, by ``run_id``): the current run's round in
  progress (0-based), its number of rounds, its last test accuracy; ``run_info`` (1, by ``run_id``, ``paradigm``,
  ``state``); ``queued_runs`` (gauge).
- ``step_seconds`` (histogram, by ``step``: the function the paradigm ran, e.g. ``top_train_step``): the latency of
  each model computation on the server's compute thread; its ``_count`` is the step progress and its ``_sum`` the
  server's compute time.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from slperf.common.metrics_http import METRICS_READY_PREFIX, MetricsAddressError, MetricsServer, serve_metrics
from slperf.common.wire.framing import ByteCounter
from slperf.slserver.coordinator import RunCoordinator
from slperf.slserver.interceptors import Continuation, Handler, with_wrapper
from slperf.slserver.sessions import Session, SessionRegistry

log = logging.getLogger("slperf.server")

__all__ = ["METRICS_READY_PREFIX", "MetricsAddressError", "MetricsServer", "ServerMetrics", "ErrorCountingInterceptor"]

# Model steps on the server take from well under a millisecond (a tiny top) to seconds (a large one on a CPU).
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class _ClientTraffic:
    """A client's counters: those of its sessions still open, plus the totals of its closed ones."""

    live: list[ByteCounter] = field(default_factory=list)
    closed: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # bytes up, down, messages up, down

    def totals(self) -> tuple[int, int, int, int]:
        up, down, m_up, m_down = self.closed
        for c in self.live:
            up, down, m_up, m_down = up + c.up, down + c.down, m_up + c.messages_up, m_down + c.messages_down
        return up, down, m_up, m_down


class ServerMetrics(Collector):
    """The server's metrics: a collector over the registry's sessions and the coordinator's run, plus the event
    counters the server's hooks feed."""

    def __init__(self, sessions: SessionRegistry, coordinator: RunCoordinator):
        self.sessions = sessions
        self.coordinator = coordinator
        self.registry = CollectorRegistry(auto_describe=True)
        self.errors = Counter(
            "slperf_server_errors",
            "Non-OK statuses the server ended calls with (where=call) and in-stream error reports (where=stream)",
            ["code", "where"],
            registry=self.registry,
        )
        self.steps = Histogram(
            "slperf_server_step_seconds",
            "Latency of each model computation on the server's compute thread, by the function the paradigm ran",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self._traffic: dict[str, _ClientTraffic] = {}
        self.registry.register(self)
        sessions.listeners.append(self)
        coordinator.step_observer = self.observe_step

    # -- hooks the server calls at events --------------------------------------------------------------------
    def session_added(self, session: Session) -> None:
        """A new session: its endpoint's counter is the one its framer and deframer add to for its whole life (a
        reconnect swaps the session's ``counter`` for the registry's bookkeeping, not the framer's)."""
        self._traffic.setdefault(session.client_id, _ClientTraffic()).live.append(session.counter)

    def stream_error(self, code: grpc.StatusCode) -> None:
        self.errors.labels(code=code.name, where="stream").inc()

    def call_error(self, code: grpc.StatusCode) -> None:
        self.errors.labels(code=code.name, where="call").inc()

    def observe_step(self, step: str, seconds: float) -> None:
        """Called on the compute thread after each computation (a Histogram is thread-safe)."""
        self.steps.labels(step=step).observe(seconds)

    # -- read at scrape time -----------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily("slperf_server_sessions", "Client sessions connected now", labels=["state"])
        by_state: dict[str, int] = {}
        for session in list(self.sessions.sessions.values()):
            by_state[session.state.value] = by_state.get(session.state.value, 0) + 1
        for state, count in sorted(by_state.items()):
            sessions.add_metric([state], count)
        yield sessions
        yield from self._traffic_metrics()
        yield from self._run_metrics()

    def _traffic_metrics(self) -> Iterator[Metric]:
        live = {id(s.counter) for s in list(self.sessions.sessions.values())}
        nbytes = CounterMetricFamily(
            "slperf_server_client_bytes",
            "Exact serialized bytes on a client's sessions since the server started",
            labels=["client", "direction"],
        )
        messages = CounterMetricFamily(
            "slperf_server_client_messages",
            "Envelopes on a client's sessions since the server started",
            labels=["client", "direction"],
        )
        for client_id, traffic in sorted(self._traffic.items()):
            # Closed sessions are folded into the totals, so a reconnecting client does not grow the list.
            for counter in [c for c in traffic.live if id(c) not in live]:
                traffic.live.remove(counter)
                for i, value in enumerate((counter.up, counter.down, counter.messages_up, counter.messages_down)):
                    traffic.closed[i] += value
            up, down, m_up, m_down = traffic.totals()
            nbytes.add_metric([client_id, "up"], up)
            nbytes.add_metric([client_id, "down"], down)
            messages.add_metric([client_id, "up"], m_up)
            messages.add_metric([client_id, "down"], m_down)
        yield nbytes
        yield messages
        kinds = CounterMetricFamily(
            "slperf_server_client_messages_by_kind",
            "Messages (reassembled, not envelopes) a client sent since the server started, by kind: what reached "
            "this server (with a fed server, model_state stays 0 for SplitFed clients)",
            labels=["client", "kind"],
        )
        for client_id in sorted(set(self._traffic) | set(self.sessions.retired_kinds)):
            for kind, count in sorted(self.sessions.client_kinds(client_id).items()):
                kinds.add_metric([client_id, kind], count)
        yield kinds

    def _run_metrics(self) -> Iterator[Metric]:
        run = self.coordinator.current
        info = GaugeMetricFamily(
            "slperf_server_run_info", "The current run (1)", labels=["run_id", "paradigm", "state"]
        )
        rnd = GaugeMetricFamily(
            "slperf_server_run_round", "Round in progress of the current run (0-based)", labels=["run_id"]
        )
        rounds = GaugeMetricFamily("slperf_server_run_rounds", "Rounds of the current run", labels=["run_id"])
        accuracy = GaugeMetricFamily(
            "slperf_server_run_test_accuracy", "Last test accuracy of the current run", labels=["run_id"]
        )
        if run is not None:
            info.add_metric([run.run_id, run.config.paradigm, run.state.value], 1)
            rnd.add_metric([run.run_id], run.round)
            rounds.add_metric([run.run_id], run.config.epochs)
            accuracy.add_metric([run.run_id], run.test_accuracy)
        yield from (info, rnd, rounds, accuracy)
        yield GaugeMetricFamily(
            "slperf_server_queued_runs", "Runs waiting in the queue", value=len(self.coordinator.queue)
        )

    def describe(self) -> list[Metric]:
        return []  # the families vary with what is connected; nothing to check at registration

    # -- serving ---------------------------------------------------------------------------------------------
    def serve(self, address: str) -> MetricsServer:
        """Serves ``/metrics`` on ``address`` (HOST:PORT, port 0 = any) from a thread of prometheus_client's."""
        return serve_metrics(self.registry, address)


class ErrorCountingInterceptor(grpc.aio.ServerInterceptor):
    """Counts the status of every call the server ends with a non-OK code (``context.abort``) or by a bug
    (UNKNOWN), whoever ended it: a handler or an authorisation check. Installed outermost, so it sees them all."""

    def __init__(self, count: Callable[[grpc.StatusCode], None]):
        self._count = count

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return with_wrapper(handler, self._counted)

    def _counted(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        count = self._count
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    async for item in behaviour(request, context):
                        yield item
                except grpc.aio.AbortError:
                    count(context.code() or grpc.StatusCode.UNKNOWN)
                    raise
                except Exception:
                    count(grpc.StatusCode.UNKNOWN)
                    raise

            return stream

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                count(context.code() or grpc.StatusCode.UNKNOWN)
                raise
            except Exception:
                count(grpc.StatusCode.UNKNOWN)
                raise

        return call
