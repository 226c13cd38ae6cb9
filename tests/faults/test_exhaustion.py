"""A certificate holder who opens many session streams and never says Hello must not lock anybody else out.

Real server process, real gRPC over mutual TLS on loopback. The attacker holds a valid client certificate (c1)
and opens ``IDLE_STREAMS`` session streams that never send anything; an honest client (c2) must still get its
Welcome, the operator's Status call must answer, and so must the health check.
"""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slperf.common.security.credentials import client_channel_credentials, operator_channel_credentials
from slperf.common.transport.channel import create_channel, open_session
from slperf.common.wire.serde import PROTOCOL_VERSION
from slperf.pki import revoke
from slperf.v1 import service_pb2, service_pb2_grpc, session_pb2

IDLE_STREAMS = 300
LIMIT = 2  # --max-streams-per-client
HELLO_TIMEOUT = 5.0
CONNECTIONS = 300  # idle TCP connections of an outsider


def _hello(client_id: str) -> session_pb2.ClientMessage:
    return session_pb2.ClientMessage(
        seq=1, hello=session_pb2.Hello(client_id=client_id, protocol_version=PROTOCOL_VERSION)
    )


async def _welcome(channel: grpc.aio.Channel, client_id: str) -> session_pb2.ServerMessage:
    call = open_session(channel)
    try:
        await call.write(_hello(client_id))
        return await asyncio.wait_for(call.read(), 10)
    finally:
        call.cancel()


async def _status_code(call: grpc.aio.StreamStreamCall, within: float) -> grpc.StatusCode:
    """The status an idle stream ends with (it sends nothing, so it can only end by the server's doing)."""
    try:
        await asyncio.wait_for(call.read(), within)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_idle_streams_of_one_certificate_leave_clients_operator_and_health_served(daemons, pki):
    port = daemons.server(
        pki, daemons.tmp / "runs", "--hello-timeout", str(HELLO_TIMEOUT), "--max-streams-per-client", str(LIMIT)
    )
    target = f"127.0.0.1:{port}"

    async def main() -> None:
        attacker = create_channel(target, client_channel_credentials(pki, "c1"), server_name="localhost")
        honest = create_channel(target, client_channel_credentials(pki, "c2"), server_name="localhost")
        operator = create_channel(target, operator_channel_credentials(pki), server_name="localhost")
        idle = [open_session(attacker) for _ in range(IDLE_STREAMS)]
        endings = [asyncio.ensure_future(_status_code(call, 20)) for call in idle]
        try:
            # Beyond the per-client limit every stream is refused as it opens, long before the Hello deadline.
            refused = []
            for ending in asyncio.as_completed(endings):
                refused.append(await ending)
                if len(refused) == IDLE_STREAMS - LIMIT:
                    break
            assert set(refused) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            held = [ending for ending in endings if not ending.done()]
            assert len(held) == LIMIT

            # While the attacker holds its streams, everybody else is served.
            welcome = await _welcome(honest, "c2")
            assert welcome.WhichOneof("body") == "welcome"
            status = await service_pb2_grpc.ControlStub(operator).Status(service_pb2.StatusRequest(), timeout=10)
            assert status.server_version
            health = await health_pb2_grpc.HealthStub(honest).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert not any(ending.done() for ending in held)

            # The streams the limit let through end at the Hello deadline.
            assert await asyncio.gather(*held) == [grpc.StatusCode.DEADLINE_EXCEEDED] * LIMIT
        finally:
            for call in idle:
                call.cancel()
            await asyncio.gather(*endings, return_exceptions=True)
            for channel in (attacker, honest, operator):
                await channel.close()

    asyncio.run(main())


def test_a_revoked_certificate_is_refused_when_the_stream_opens(daemons, pki):
    revoke(pki, "c1")
    port = daemons.server(pki, daemons.tmp / "runs")

    async def main() -> None:
        channel = create_channel(f"127.0.0.1:{port}", client_channel_credentials(pki, "c1"), server_name="localhost")
        call = open_session(channel)
        try:
            code = await _status_code(call, 10)  # no Hello sent: refused on the certificate alone
            assert code == grpc.StatusCode.UNAUTHENTICATED
        finally:
            call.cancel()
            await channel.close()

    asyncio.run(main())


@pytest.mark.parametrize("allowed", ["c2"])
def test_a_client_outside_the_allowed_list_is_refused_when_the_stream_opens(daemons, pki, allowed):
    port = daemons.server(pki, daemons.tmp / "runs", "--allowed-clients", allowed)

    async def main() -> None:
        channel = create_channel(f"127.0.0.1:{port}", client_channel_credentials(pki, "c1"), server_name="localhost")
        call = open_session(channel)
        try:
            assert await _status_code(call, 10) == grpc.StatusCode.PERMISSION_DENIED
        finally:
            call.cancel()
            await channel.close()

    asyncio.run(main())


def test_client_text_is_bounded_in_statuses_and_logs(daemons, pki):
    """A 1 MiB client id is INVALID_ARGUMENT (it was RESOURCE_EXHAUSTED: the id echoed into the status overflowed
    gRPC's metadata limit), and a flood of Error reports with embedded newlines leaves a few escaped lines in the
    server log instead of megabytes of forged ones."""
    port = daemons.server(pki, daemons.tmp / "runs")
    reports, report_text = 200, ("x" * 65_536 + "\n2099-01-01 INFO slperf.server: client forged connected")

    async def main() -> None:
        channel = create_channel(f"127.0.0.1:{port}", client_channel_credentials(pki, "c1"), server_name="localhost")
        try:
            call = open_session(channel)
            await call.write(_hello("c" * (1 << 20)))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call.read(), 10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(info.value.details()) < 400

            call = open_session(channel)
            await call.write(_hello("c1"))
            assert (await asyncio.wait_for(call.read(), 10)).WhichOneof("body") == "welcome"
            for seq in range(2, reports + 2):
                await call.write(
                    session_pb2.ClientMessage(seq=seq, error=session_pb2.Error(code=13, message=report_text))
                )
            # Each report (this client takes part in no run) is answered FAILED_PRECONDITION, in order.
            for _ in range(reports):
                assert (await asyncio.wait_for(call.read(), 10)).WhichOneof("body") == "error"
            call.cancel()
        finally:
            await channel.close()

    asyncio.run(main())
    log = daemons.log("server")
    assert "\n2099-01-01" not in log  # no forged line: the newline is escaped
    assert log.count("slperf.server.sessions") <= 11  # a burst of 10 lines, then 1 a second
    assert len(log) < 20_000, len(log)


def test_revoking_a_connected_client_ends_its_session_and_refuses_its_return(daemons, pki):
    port = daemons.server(pki, daemons.tmp / "runs", "--revocation-check-seconds", "0.2")
    target = f"127.0.0.1:{port}"

    async def main() -> None:
        channel = create_channel(target, client_channel_credentials(pki, "c1"), server_name="localhost")
        operator = create_channel(target, operator_channel_credentials(pki), server_name="localhost")
        call = open_session(channel)
        try:
            await call.write(_hello("c1"))
            assert (await asyncio.wait_for(call.read(), 10)).WhichOneof("body") == "welcome"
            revoke(pki, "c1")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call.read(), 10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "revoked" in info.value.details()
            status = await service_pb2_grpc.ControlStub(operator).Status(service_pb2.StatusRequest(), timeout=10)
            assert [c.client_id for c in status.clients] == []  # it cannot be picked for the next run
            again = open_session(channel)
            assert await _status_code(again, 10) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            call.cancel()
            await channel.close()
            await operator.close()

    asyncio.run(main())


def test_idle_connections_that_never_handshake_are_closed_at_the_handshake_timeout(daemons, pki):
    """An outsider's idle TCP connections (no TLS at all) are closed after --handshake-timeout, not after gRPC's
    default two minutes, so they cannot pile up until the server runs out of file descriptors."""
    port = daemons.server(pki, daemons.tmp / "runs", "--handshake-timeout", "1")
    sockets = []
    try:
        for _ in range(CONNECTIONS):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for sock in sockets:
            # Closed by the server: gRPC's default would keep it 120 s, and the socket's own 10 s timeout would
            # raise first.
            assert sock.recv(1) == b""
    finally:
        for sock in sockets:
            sock.close()
