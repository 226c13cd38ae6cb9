"""The HTTP side of the daemons' Prometheus endpoints (``slperf server|client --metrics-address HOST:PORT``): one
``/metrics`` on a daemon's own ``CollectorRegistry``, served from a thread of prometheus_client's, and the line a
daemon prints once it listens. What is measured is each daemon's own (``slperf.slserver.metrics``,
``slperf.slclient.metrics``); how it is served is the same for both, so it lives here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

# Printed on stdout once the endpoint listens (after the daemon's own ready line, if it prints one): with port 0 the
# only way a supervisor or a test learns the port.
METRICS_READY_PREFIX = "SLPERF_METRICS port="


class MetricsAddressError(Exception):
    """``--metrics-address`` is not HOST:PORT, or the endpoint cannot listen there."""


@dataclass
class MetricsServer:
    """The running HTTP endpoint; ``close`` stops it."""

    http: WSGIServer
    join: Callable[..., None]

    @property
    def port(self) -> int:
        return int(self.http.server_port)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.join(5.0)


def serve_metrics(registry: CollectorRegistry, address: str) -> MetricsServer:
    """Serves ``registry`` at ``/metrics`` on ``address`` (HOST:PORT, port 0 = any; ``[::1]:P`` for IPv6)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise MetricsAddressError(f"--metrics-address must be HOST:PORT, got {address!r}")
    try:
        server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    except OSError as exc:
        raise MetricsAddressError(
            f"cannot serve metrics on {address}: {exc.strerror or exc} (choose another --metrics-address)"
        ) from None
    return MetricsServer(server, thread.join)
