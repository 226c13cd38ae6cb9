"""The session service over real gRPC on loopback: a session the server ends always tells the client why, and a
client that stops reading cannot block the server's writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import torch

from slperf.common.protocol.messages import Hello, ModelState, Welcome
from slperf.common.transport.channel import create_channel, grpc_options, open_session
from slperf.common.transport.endpoint import ClientEndpoint, Endpoint, Side
from slperf.common.wire.serde import PROTOCOL_VERSION
from slperf.slserver.interceptors import HelloAuthorizer
from slperf.slserver.service import SplitLearningService, add_session_service
from slperf.slserver.sessions import Session, SessionLimits, SessionRegistry


@dataclass
class Connected:
    registry: SessionRegistry
    call: grpc.aio.StreamStreamCall
    client: ClientEndpoint
    session: Session


@asynccontextmanager
async def _connected(limits: SessionLimits) -> AsyncIterator[Connected]:
    """A real server (plaintext) with one client session past Welcome."""
    registry = SessionRegistry(limits=limits)
    server = grpc.aio.server(options=grpc_options())
    add_session_service(server, SplitLearningService(registry, HelloAuthorizer(None, True, None)))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with create_channel(f"127.0.0.1:{port}", None) as channel:
            call = open_session(channel)
            client: ClientEndpoint = Endpoint(call, Side.CLIENT)
            await client.send(Hello(PROTOCOL_VERSION, "c1"))
            assert isinstance(await client.receive(), Welcome)
            session = registry.get("c1")
            assert session is not None
            yield Connected(registry, call, client, session)
    finally:
        await server.stop(None)


async def _ended(connected: Connected) -> tuple[grpc.StatusCode, str]:
    """Reads the client's stream to its end; the status the server ended it with (a read raises it, if not OK)."""
    try:
        while await connected.client.receive() is not None:
            pass
    except grpc.aio.AioRpcError:
        pass
    return await connected.call.code(), await connected.call.details()


def test_a_session_the_server_ends_says_why_on_the_stream():
    async def main() -> tuple[grpc.StatusCode, str]:
        async with _connected(SessionLimits()) as connected:
            connected.session.close("dropped: no message for 30 s (client_timeout)", grpc.StatusCode.DEADLINE_EXCEEDED)
            return await asyncio.wait_for(_ended(connected), 30)

    code, details = asyncio.run(main())
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert details == "dropped: no message for 30 s (client_timeout)"


def test_a_client_that_stops_reading_is_dropped_when_a_write_times_out_and_is_told_why():
    big = {"w": torch.zeros(4 << 20)}  # 16 MiB per message: far beyond what HTTP/2 windows and buffers hold

    async def main() -> tuple[int, str, grpc.StatusCode, str]:
        async with _connected(SessionLimits(write_timeout=0.5)) as connected:
            sent = 0
            try:
                while sent < 64:  # the client reads nothing meanwhile
                    await connected.session.send(ModelState("r", 0, "bottom", big))
                    sent += 1
            except ConnectionError as exc:
                error = str(exc)
            else:
                error = ""
            code, details = await asyncio.wait_for(_ended(connected), 30)
            return sent, error, code, details

    sent, error, code, details = asyncio.run(main())
    assert sent < 64 and "write_timeout" in error
    assert code is grpc.StatusCode.UNAVAILABLE and "write_timeout" in details
