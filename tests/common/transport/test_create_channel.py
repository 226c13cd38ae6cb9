"""create_channel / create_sync_channel: plaintext or TLS, and the expected server name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pki_helpers import make_pki

from slperf.common.security.credentials import operator_channel_credentials, server_credentials
from slperf.common.transport.channel import create_channel, create_sync_channel


async def _serve(certs: Path | None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = (
        server.add_insecure_port("127.0.0.1:0")
        if certs is None
        else server.add_secure_port("127.0.0.1:0", server_credentials(certs))
    )
    await server.start()
    return server, port


async def _check(certs: Path | None, server_name: str | None) -> grpc.StatusCode:
    server, port = await _serve(certs)
    creds = None if certs is None else operator_channel_credentials(certs)
    try:
        async with create_channel(f"127.0.0.1:{port}", creds, server_name=server_name) as channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.aio.AioRpcError as err:
                return err.code()
            return grpc.StatusCode.OK
    finally:
        await server.stop(None)


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "certs", ())


def test_plaintext_without_credentials():
    assert asyncio.run(_check(None, None)) == grpc.StatusCode.OK


def test_the_server_name_is_what_the_certificate_must_name(pki: Path):
    assert asyncio.run(_check(pki, "server")) == grpc.StatusCode.OK  # a SAN of the server certificate
    assert asyncio.run(_check(pki, "elsewhere.example")) == grpc.StatusCode.UNAVAILABLE


def test_the_blocking_variant(pki: Path):
    async def main() -> grpc.StatusCode:
        server, port = await _serve(pki)
        channel = create_sync_channel(
            f"127.0.0.1:{port}",
            operator_channel_credentials(pki),
            server_name="localhost",
            options=[("grpc.enable_retries", 0)],
        )
        try:
            loop = asyncio.get_running_loop()
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await loop.run_in_executor(None, lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=5))
            return reply.status
        finally:
            channel.close()
            await server.stop(None)

    assert asyncio.run(main()) == health_pb2.HealthCheckResponse.SERVING
