"""Health check through the server's gRPC health service (``grpc.health.v1.Health/Check``).

Used by container health checks (Dockerfile HEALTHCHECK, docker-compose, Kubernetes exec probes) and by
operators::

    python -m slperf.healthcheck --server server:50051 --certs /var/lib/slperf/certs      # operator pair in DIR
    python -m slperf.healthcheck --server server:50051 --ca ca.pem --cert c1.pem --key c1.key
    python -m slperf.healthcheck --server 127.0.0.1:50051 --insecure                      # plaintext servers

The server asks every peer for a certificate signed by the federation CA, so a health check over mutual TLS
needs a client-auth certificate: the operator's (``--certs DIR`` reads ``ca.pem`` + ``operator.pem/.key``,
the same layout as the operator commands) or a client daemon's own (``--ca/--cert/--key``), which also proves
that this silo's certificate, CA and route to the server work. Every option can come from an environment
variable (``SLPERF_HEALTH_SERVER``, ``SLPERF_HEALTH_CERTS``, ...), so an image can carry one HEALTHCHECK line
and each container sets only what differs.

Exit status: 0 when the service answers SERVING, 1 for anything else (not serving, unreachable, TLS refused,
unreadable certificate), with one line saying which; 2 for a usage error. Nothing here imports torch, so a
check costs a fraction of a second.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from slperf.common.errors import RpcFailure, one_line

if TYPE_CHECKING:
    import grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 5.0
DETAIL_LIMIT = 300  # characters of a failure's detail: a health check's line must fit a container status
EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    status: str  # SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN, or the gRPC status code name of a failed call
    detail: str
    seconds: float

    def line(self, address: str, service: str) -> str:
        what = f"{address}{' ' + service if service else ''}"
        text = f"{self.status} {what} ({self.seconds * 1000:.0f} ms)"
        return f"{text}: {self.detail}" if self.detail else text


def check(
    address: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    service: str = "",
    server_name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> HealthResult:
    """One Health/Check call. ``credentials``: grpc.ChannelCredentials, or None for plaintext."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from slperf.common.transport.channel import create_sync_channel

    # A health check must not wait out a reconnect backoff: one attempt, bounded by the deadline.
    options = [("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 100)]
    started = time.perf_counter()
    channel = create_sync_channel(address, credentials, server_name=server_name, options=options)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        healthy = reply.status == health_pb2.HealthCheckResponse.SERVING
        return HealthResult(healthy, status, "", time.perf_counter() - started)
    except grpc.RpcError as exc:
        failure = RpcFailure.of(exc)
        hint = ""
        if failure.code == grpc.StatusCode.UNAVAILABLE and credentials is not None:
            hint = " (server down or unreachable, or TLS refused: check the CA, the certificate and the server name)"
        elif failure.code == grpc.StatusCode.NOT_FOUND:
            hint = f" (the server has no health status for service {service!r})"
        return HealthResult(
            False,
            failure.code_name("RPC_ERROR"),
            one_line(f"{failure.details}{hint}", DETAIL_LIMIT),
            time.perf_counter() - started,
        )
    finally:
        channel.close()


def credentials_for(
    *, certs_dir: Path | None, ca: Path | None, cert: Path | None, key: Path | None, insecure: bool
) -> grpc.ChannelCredentials | None:
    """Channel credentials from the options (None for plaintext). Raises TLSConfigError / ValueError.

    Unlike the client daemon, a health check may do server-only TLS (``--ca`` alone): it then shows that the
    server refuses a peer without a client certificate.
    """
    if insecure:
        if any(v is not None for v in (certs_dir, ca, cert, key)):
            raise ValueError("--insecure takes no certificate options")
        return None
    from slperf.common.security.credentials import resolve_credential_files

    files = resolve_credential_files(certs_dir=certs_dir, ca=ca, cert=cert, key=key)
    if files.ca is None:
        raise ValueError(
            "give --certs DIR (CA + operator certificate), or --ca/--cert/--key, or --insecure for a plaintext server"
        )
    if (files.cert is None) != (files.key is None):
        raise ValueError("--cert and --key go together")
    return files.credentials()


@click.command("health", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    "address",
    envvar="SLPERF_HEALTH_SERVER",
    default=DEFAULT_ADDRESS,
    show_default=True,
    help="server HOST:PORT [env SLPERF_HEALTH_SERVER]",
)
@click.option(
    "--certs",
    "certs_dir",
    envvar="SLPERF_HEALTH_CERTS",
    type=click.Path(path_type=Path),
    help="folder with ca.pem and operator.pem/.key [env SLPERF_HEALTH_CERTS]",
)
@click.option(
    "--ca", envvar="SLPERF_HEALTH_CA", type=click.Path(path_type=Path), help="CA certificate [env SLPERF_HEALTH_CA]"
)
@click.option(
    "--cert",
    envvar="SLPERF_HEALTH_CERT",
    type=click.Path(path_type=Path),
    help="client-auth certificate (a client's or the operator's) [env SLPERF_HEALTH_CERT]",
)
@click.option(
    "--key", envvar="SLPERF_HEALTH_KEY", type=click.Path(path_type=Path), help="its private key [env SLPERF_HEALTH_KEY]"
)
@click.option(
    "--server-name",
    envvar="SLPERF_HEALTH_SERVER_NAME",
    help="TLS name to expect in the server certificate when the address is not in it",
)
@click.option("--insecure", is_flag=True, envvar="SLPERF_HEALTH_INSECURE", help="plaintext server (local experiments)")
@click.option(
    "--service",
    default="",
    show_default=True,
    help="health service name ('' = the whole server; slperf.v1.SplitLearning, slperf.v1.Control)",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="seconds to wait for the answer",
)
@click.option("-q", "--quiet", is_flag=True, help="print nothing when healthy")
def health(address, certs_dir, ca, cert, key, server_name, insecure, service, timeout, quiet) -> None:
    """Ask a server's gRPC health service whether it is SERVING (exit 0) or not (exit 1)."""
    from slperf.common.security.errors import TLSConfigError

    try:
        creds = credentials_for(certs_dir=certs_dir, ca=ca, cert=cert, key=key, insecure=insecure)
    except (TLSConfigError, ValueError) as exc:
        click.echo(f"UNHEALTHY {address}: {one_line(exc, DETAIL_LIMIT)}", err=True)
        sys.exit(EXIT_UNHEALTHY)
    result = check(address, creds, service=service, server_name=server_name, timeout=timeout)
    if result.healthy:
        if not quiet:
            click.echo(result.line(address, service))
        sys.exit(EXIT_HEALTHY)
    click.echo(result.line(address, service), err=True)
    sys.exit(EXIT_UNHEALTHY)


def main(argv: list[str] | None = None) -> None:
    """``python -m slperf.healthcheck ...`` (the same command as ``slperf health`` once the CLI mounts it)."""
    health.main(args=argv, prog_name="python -m slperf.healthcheck")


if __name__ == "__main__":
    main()
