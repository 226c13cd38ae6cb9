"""The fed server daemon (``slperf fedserver``): a grpc.aio server with the aggregation service over mutual TLS.

It announces ``SLPERF_FEDSERVER_READY port=N`` on stdout once it listens, and one ``SLPERF_FED_SETTLED`` line per
settled round (who was averaged, who was left out), which a supervisor or a test reads instead of polling.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from slperf.common.security.errors import TLSConfigError
from slperf.common.security.layout import ca_paths, fedserver_paths
from slperf.common.security.pem import check_pair, load_cert, load_certs, load_key, warn_if_expired
from slperf.common.transport.channel import grpc_options
from slperf.fedserver.aggregator import FedAggregator
from slperf.fedserver.service import FedService, add_fed_services

log = logging.getLogger("slperf.fedserver")

READY_PREFIX = "SLPERF_FEDSERVER_READY port="
SETTLED_PREFIX = "SLPERF_FED_SETTLED "


@dataclass
class FedServerOptions:
    address: str = "127.0.0.1:50052"
    certs_dir: Path | None = None


def fed_server_credentials(certs_dir: Path) -> grpc.ServerCredentials:
    """``fedserver.pem`` + ``fedserver.key``, trusting only ``ca.pem`` for the certificates of its callers."""
    ca_pem, _ = load_certs(ca_paths(certs_dir)[0], "CA certificate")
    cert_path, key_path = fedserver_paths(certs_dir)
    cert_pem, cert = load_cert(cert_path)
    key_pem, key = load_key(key_path)
    check_pair(cert, key, cert_path, key_path)
    warn_if_expired(cert, cert_path)
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True)


def settled_line(run_id: str, round: int, averaged: list[str], missing: list[str]) -> str:
    return f"{SETTLED_PREFIX}run={run_id} round={round} averaged={','.join(averaged)} missing={','.join(missing)}"


async def serve(opts: FedServerOptions, *, announce: Callable[[str], object] = print) -> None:
    if opts.certs_dir is None:
        raise TLSConfigError(
            "the fed server needs --certs DIR (mutual TLS; create it with `slperf certs add-fedserver`)"
        )
    credentials = fed_server_credentials(opts.certs_dir)

    def on_settle(run_id: str, round: int, averaged: list[str], missing: list[str]) -> None:
        announce(settled_line(run_id, round, averaged, missing))

    service = FedService(FedAggregator(), on_settle=on_settle)
    server = grpc.aio.server(options=grpc_options() + [("grpc.so_reuseport", 0)])
    add_fed_services(server, service)
    port = server.add_secure_port(opts.address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {opts.address}: the port is in use or the address is not local")
    await server.start()
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.set)
    log.info("fed server listening on port %d (mutual TLS)", port)
    announce(f"{READY_PREFIX}{port}")
    try:
        await shutdown.wait()
    finally:
        await server.stop(grace=2.0)


def run_fed_server(opts: FedServerOptions) -> None:
    asyncio.run(serve(opts, announce=lambda line: (print(line), sys.stdout.flush())))
