"""The in-memory session stream of the simulation backend: endpoints over it move messages and count the bytes that
gRPC would carry, a writer waits when its reader falls behind (back-pressure), and the half-closes and the status
behave as a gRPC call's do."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch

from slperf.common.protocol.messages import Finish, Hello, Ready
from slperf.common.protocol.types import CutTensor, Phase, StepRef
from slperf.common.transport.channel import Malformed
from slperf.common.transport.endpoint import Endpoint, Side
from slperf.common.transport.memory import LinkClosed, MemoryLink
from slperf.v1 import session_pb2

REF = StepRef("run", 0, 3, Phase.TRAIN)


def test_endpoints_over_a_memory_link_deliver_copies_and_count_both_sides_alike():
    async def main() -> None:
        link = MemoryLink("sim:c1")
        client = Endpoint(link.client, Side.CLIENT, name="c1")
        server = Endpoint(link.server, Side.SERVER, name="c1")
        tensor = torch.arange(300_000, dtype=torch.float32).reshape(1000, 300)  # big enough to be chunked
        send = asyncio.create_task(client.send(CutTensor(REF, tensor, torch.zeros(1000, dtype=torch.int64))))
        got = await server.receive()
        await send
        assert isinstance(got, CutTensor) and torch.equal(got.tensor, tensor)
        assert got.tensor.data_ptr() != tensor.data_ptr()  # parsed from bytes, never the sender's memory
        assert client.counter.up == server.counter.up > tensor.numel() * 4
        await client.send(Ready("run", 5, 6))
        assert await server.receive() == Ready("run", 5, 6)
        await server.send(Finish("run", "done"))
        assert await client.receive() == Finish("run", "done")
        assert client.counter.down == server.counter.down > 0

    asyncio.run(main())


def test_a_writer_waits_while_its_reader_is_capacity_envelopes_behind():
    async def main() -> None:
        link = MemoryLink("sim:c1", capacity=2)
        envelope = session_pb2.ClientMessage(seq=1)
        await link.client.write(envelope)
        await link.client.write(envelope)
        third = asyncio.create_task(link.client.write(envelope))
        await asyncio.sleep(0)  # lets the write run up to its wait (it must be waiting, not done)
        assert not third.done()
        await link.server.read()
        await asyncio.wait_for(third, 5)

    asyncio.run(main())


def test_done_writing_is_eof_for_the_server_and_the_handlers_end_is_eof_then_status_for_the_client():
    async def main() -> None:
        link = MemoryLink("sim:c1")
        await link.client.write(session_pb2.ClientMessage(seq=1))
        await link.client.done_writing()
        assert isinstance(await link.server.read(), session_pb2.ClientMessage)
        assert await link.server.read() is grpc.aio.EOF
        await link.server.write(session_pb2.ServerMessage(seq=1))
        with pytest.raises(grpc.aio.AbortError):
            await link.server.abort(grpc.StatusCode.PERMISSION_DENIED, "not you")
        assert isinstance(await link.client.read(), session_pb2.ServerMessage)  # written before the end
        assert await link.client.read() is grpc.aio.EOF
        assert await link.client.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await link.client.details() == "not you"
        link.finish(grpc.StatusCode.OK)  # the handler's return after its abort: the abort's status stays
        assert await link.client.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(LinkClosed):
            await link.server.write(session_pb2.ServerMessage(seq=2))

    asyncio.run(main())


def test_a_writer_blocked_on_a_full_link_fails_when_the_stream_ends():
    async def main() -> None:
        link = MemoryLink("sim:c1", capacity=1)
        await link.client.write(session_pb2.ClientMessage(seq=1))
        blocked = asyncio.create_task(link.client.write(session_pb2.ClientMessage(seq=2)))
        await asyncio.sleep(0)
        link.finish(grpc.StatusCode.UNAVAILABLE, "gone")
        with pytest.raises(LinkClosed):
            await asyncio.wait_for(blocked, 5)

    asyncio.run(main())


def test_bytes_that_do_not_parse_reach_the_server_as_malformed_as_over_grpc():
    async def main() -> None:
        link = MemoryLink("sim:c1")
        await link.client._link._up.put(b"\xff\xff\xff")
        assert isinstance(await link.server.read(), Malformed)
        client = Endpoint(link.client, Side.CLIENT)
        server = Endpoint(link.server, Side.SERVER)
        await client.send(Hello(1, "c1", "x"))
        assert isinstance(await server.receive(), Hello)

    asyncio.run(main())
