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

import click

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 5.0
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


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check(address: str, credentials=None, *, service: str = "", server_name: str | None = None,
          timeout: float = DEFAULT_TIMEOUT_S) -> HealthResult:
    """One Health/Check call. ``credentials``: grpc.ChannelCredentials, or None for plaintext."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    # A health check must not wait out a reconnect backoff: one attempt, bounded by the deadline.
    options += [("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 100)]
    started = time.perf_counter()
    channel = (grpc.insecure_channel(address, options=options) if credentials is None
               else grpc.secure_channel(address, credentials, options=options))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        healthy = reply.status == health_pb2.HealthCheckResponse.SERVING
        return HealthResult(healthy, status, "", time.perf_counter() - started)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        name = code.name if code is not None else "RPC_ERROR"
        hint = ""
        if code == grpc.StatusCode.UNAVAILABLE and credentials is not None:
            hint = " (server down or unreachable, or TLS refused: check the CA, the certificate and the server name)"
        elif code == grpc.StatusCode.NOT_FOUND:
            hint = f" (the server has no health status for service {service!r})"
        return HealthResult(False, name, _one_line(f"{details}{hint}"), time.perf_counter() - started)
    finally:
        channel.close()


def credentials_for(*, certs_dir: Path | None, ca: Path | None, cert: Path | None, key: Path | None,
                    insecure: bool):
    """Channel credentials from the options (None for plaintext). Raises TLSConfigError / ValueError."""
    if insecure:
        if any(v is not None for v in (certs_dir, ca, cert, key)):
            raise ValueError("--insecure takes no certificate options")
        return None
    from slperf.common import tls

    if certs_dir is not None:
        ca = ca or tls.ca_paths(certs_dir)[0]
        op_cert, op_key = tls.operator_paths(certs_dir)
        cert, key = cert or op_cert, key or op_key
    if ca is None:
        raise ValueError("give --certs DIR (CA + operator certificate), or --ca/--cert/--key, "
                         "or --insecure for a plaintext server")
    if (cert is None) != (key is None):
        raise ValueError("--cert and --key go together")
    return tls.channel_credentials(ca, cert, key)


@click.command("health", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", "address", envvar="SLPERF_HEALTH_SERVER", default=DEFAULT_ADDRESS, show_default=True,
              help="server HOST:PORT [env SLPERF_HEALTH_SERVER]")
@click.option("--certs", "certs_dir", envvar="SLPERF_HEALTH_CERTS", type=click.Path(path_type=Path),
              help="folder with ca.pem and operator.pem/.key [env SLPERF_HEALTH_CERTS]")
@click.option("--ca", envvar="SLPERF_HEALTH_CA", type=click.Path(path_type=Path),
              help="CA certificate [env SLPERF_HEALTH_CA]")
@click.option("--cert", envvar="SLPERF_HEALTH_CERT", type=click.Path(path_type=Path),
              help="client-auth certificate (a client's or the operator's) [env SLPERF_HEALTH_CERT]")
@click.option("--key", envvar="SLPERF_HEALTH_KEY", type=click.Path(path_type=Path),
              help="its private key [env SLPERF_HEALTH_KEY]")
@click.option("--server-name", envvar="SLPERF_HEALTH_SERVER_NAME",
              help="TLS name to expect in the server certificate when the address is not in it")
@click.option("--insecure", is_flag=True, envvar="SLPERF_HEALTH_INSECURE", help="plaintext server (local experiments)")
@click.option("--service", default="", show_default=True,
              help="health service name ('' = the whole server; slperf.v1.SplitLearning, slperf.v1.Control)")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="seconds to wait for the answer")
@click.option("-q", "--quiet", is_flag=True, help="print nothing when healthy")
def health(address, certs_dir, ca, cert, key, server_name, insecure, service, timeout, quiet) -> None:
    """Ask a server's gRPC health service whether it is SERVING (exit 0) or not (exit 1)."""
    from slperf.common.tls import TLSConfigError

    try:
        creds = credentials_for(certs_dir=certs_dir, ca=ca, cert=cert, key=key, insecure=insecure)
    except (TLSConfigError, ValueError) as exc:
        click.echo(f"UNHEALTHY {address}: {_one_line(exc)}", err=True)
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
