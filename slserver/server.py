"""The server daemon: a grpc.aio server with the session, control and health services.

Model compute runs on a dedicated thread (``ComputeContext``), so the event loop keeps serving every
session's stream, keepalives and control calls while a top segment trains.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from slperf.common.security.credentials import server_credentials
from slperf.common.security.errors import TLSConfigError
from slperf.common.transport.channel import grpc_options
from slperf.slserver.coordinator import RunCoordinator
from slperf.slserver.interceptors import HelloAuthorizer, server_interceptors
from slperf.slserver.service import ControlService, SplitLearningService, add_session_service
from slperf.v1 import service_pb2_grpc
from slperf.slserver.sessions import SessionLimits, SessionRegistry

log = logging.getLogger("slperf.server")

READY_PREFIX = "SLPERF_READY port="


@dataclass
class ServerOptions:
    address: str = "127.0.0.1:50051"
    certs_dir: Path | None = None
    insecure: bool = False
    runs_dir: Path = Path("runs")
    limits: SessionLimits | None = None
    torch_threads: int = 0
    allowed_clients: frozenset[str] | None = None


class AddressInUse(Exception):
    pass


async def serve(opts: ServerOptions, *, announce=print) -> None:
    if opts.torch_threads:
        import torch

        torch.set_num_threads(opts.torch_threads)
    limits = opts.limits or SessionLimits()
    registry = SessionRegistry(limits=limits)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slperf-compute")
    coordinator = RunCoordinator(registry, opts.runs_dir, executor)
    shutdown = asyncio.Event()
    auth = HelloAuthorizer(None if opts.insecure else opts.certs_dir, opts.insecure, opts.allowed_clients)

    # SO_REUSEPORT off: a second server on the same port must fail loudly, not share the port.
    server = grpc.aio.server(options=grpc_options() + [("grpc.so_reuseport", 0)],
                             maximum_concurrent_rpcs=limits.max_sessions + 32,
                             interceptors=server_interceptors(insecure=opts.insecure))
    resumable = coordinator.find_resumable()
    add_session_service(server, SplitLearningService(registry, auth))
    service_pb2_grpc.add_ControlServicer_to_server(ControlService(registry, coordinator, shutdown), server)
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    if opts.insecure:
        port = server.add_insecure_port(opts.address)
    else:
        if opts.certs_dir is None:
            raise TLSConfigError("the server needs --certs DIR for mutual TLS (or --insecure for a local experiment)")
        port = server.add_secure_port(opts.address, server_credentials(opts.certs_dir, require_client_auth=True))
    if port == 0:
        raise AddressInUse(f"cannot listen on {opts.address}: the port is in use or the address is not local "
                           f"(choose another with --address HOST:PORT)")
    await server.start()
    for name in ("", "slperf.v1.SplitLearning", "slperf.v1.Control"):
        await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.SERVING)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.set)
    log.info("listening on port %d (%s)", port, "plaintext" if opts.insecure else "mutual TLS")
    announce(f"{READY_PREFIX}{port}")
    if resumable is not None:
        log.info("resuming run %s from its last checkpoint", resumable.name)
        coordinator.resume(resumable)
    try:
        await shutdown.wait()
    finally:
        for name in ("", "slperf.v1.SplitLearning", "slperf.v1.Control"):
            await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.NOT_SERVING)
        run = coordinator.current
        if run is not None and not run.finished:
            await coordinator.stop(run, reason="shutdown")
        for session in list(registry.sessions.values()):
            session.close("server shutting down")
        await server.stop(grace=2.0)
        executor.shutdown(wait=True, cancel_futures=True)


async def _set_health(servicer, name: str, status) -> None:
    result = servicer.set(name, status)
    if asyncio.iscoroutine(result):
        await result


def run_server(opts: ServerOptions) -> None:
    asyncio.run(serve(opts, announce=lambda line: (print(line), sys.stdout.flush())))
