"""Server sessions: what a session refuses on its own, its inbox, and the registry's waits."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch

from slperf.common.protocol.messages import ErrorReport, Finish, Hello, Ready
from slperf.common.protocol.types import CutTensor, Phase, SessionState, StepRef
from slperf.slserver.sessions import Session, SessionLimits, SessionRegistry
from slperf.v1 import session_pb2, tensor_pb2
from tests.slserver.streams import stream_pair


async def _session(limits: SessionLimits | None = None):
    stream, client = stream_pair()
    session = Session("c1", "test", stream, limits or SessionLimits())
    reader = asyncio.create_task(session.read_loop())
    return session, client, stream, reader


def test_messages_for_no_run_and_a_second_hello_are_refused_on_the_stream():
    async def main():
        session, client, stream, reader = await _session()
        await client.send(Ready("r", 1, 1))
        error = await client.receive()
        assert isinstance(error, ErrorReport) and error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "not taking part" in error.message
        await client.send(Hello(3, "c1"))
        error = await client.receive()
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION and "Hello" in error.message
        session.in_run = "r"
        await client.send(Ready("r", 5, 6))
        assert await session.next(5) == Ready("r", 5, 6)
        stream.end()
        await reader
        assert session.closed.is_set() and session.state is SessionState.DISCONNECTED
        with pytest.raises(ConnectionError):
            await session.next(5)

    asyncio.run(main())


def test_a_bad_tensor_never_reaches_the_inbox_and_the_session_goes_on():
    async def main():
        session, client, stream, reader = await _session()
        session.in_run = "r"
        await client.send(CutTensor(StepRef("r", 0, 0, Phase.TRAIN), torch.tensor([float("nan")])))
        error = await client.receive()
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in error.message
        await client.send(Ready("r", 1, 1))
        assert await session.next(5) == Ready("r", 1, 1)
        stream.end()
        await reader

    asyncio.run(main())


def test_the_message_rate_limit_drops_what_exceeds_the_burst():
    async def main():
        limits = SessionLimits(messages_per_second=0.001, message_burst=1)
        session, client, stream, reader = await _session(limits)
        session.in_run = "r"
        await client.send(Ready("r", 1, 1))
        await client.send(Ready("r", 2, 2))
        assert await session.next(5) == Ready("r", 1, 1)
        error = await client.receive()
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "messages_per_second" in error.message
        stream.end()
        await reader

    asyncio.run(main())


def test_drain_drops_leftovers_but_not_the_close_and_a_closed_session_ends_every_read():
    async def main():
        session, client, stream, reader = await _session()
        session._inbox.put_nowait((Ready("r", 1, 1), 10))  # left over from an aborted phase
        session._inbox.put_nowait((Ready("r", 2, 2), 10))
        session.queued_bytes = 20
        session.drain()
        assert session._inbox.empty() and session.queued_bytes == 0
        waiting = asyncio.create_task(session.next(30))
        session.close("test over")
        with pytest.raises(ConnectionError, match="test over"):
            await waiting
        session.drain()
        with pytest.raises(ConnectionError):
            await session.next(30)
        stream.end()
        await reader

    asyncio.run(main())


def test_wait_session_waits_for_the_client_and_a_reconnect_moves_bytes_to_the_retired_total():
    async def main():
        registry = SessionRegistry()
        stream, _ = stream_pair()
        waiter = asyncio.create_task(registry.wait_session("c1", 30))
        first = Session("c1", "a", stream, registry.limits)
        first.counter.add(up=10, down=3)
        assert await registry.add(first) is None
        assert await waiter is first
        second = Session("c1", "b", stream_pair()[0], registry.limits)
        assert await registry.add(second) is first
        assert registry.client_bytes("c1") == (10, 3)
        await registry.remove(first)  # the replaced session unwinding must not remove the new one
        assert registry.get("c1") is second
        with pytest.raises(asyncio.TimeoutError):
            await registry.wait_session("nobody", 0.01)

    asyncio.run(main())


class _BrokenStream:
    """A stream whose writes fail as grpc's do once the call is gone (its internal ExecuteBatchError is not one of
    the exceptions anyone would think to catch)."""

    class ExecuteBatchError(Exception):
        pass

    async def write(self, envelope) -> None:
        raise self.ExecuteBatchError('Failed "execute_batch": (<grpc._cython.cygrpc.SendMessageOperation>,)')

    async def read(self):
        return grpc.aio.EOF


class _StalledStream:
    """A stream whose peer stopped reading: once its window is full, a write never completes."""

    def __init__(self) -> None:
        self.blocked = asyncio.Event()

    async def write(self, envelope) -> None:
        self.blocked.set()
        await asyncio.Event().wait()

    async def read(self):
        return grpc.aio.EOF


def test_any_failed_write_means_the_client_is_gone_and_closes_its_session():
    async def main():
        session = Session("c1", "test", _BrokenStream(), SessionLimits())
        with pytest.raises(ConnectionError, match="execute_batch"):
            await session.send(Finish("r", "done"))
        assert session.closed.is_set() and session.close_code is grpc.StatusCode.UNAVAILABLE
        await session.send_error(grpc.StatusCode.ABORTED, "nobody hears this")  # never raises on a closed session
        with pytest.raises(ConnectionError):
            await session.next(5)

    asyncio.run(main())


def test_a_write_to_a_client_that_stopped_reading_is_bounded_and_drops_it():
    async def main():
        stream = _StalledStream()
        session = Session("c1", "test", stream, SessionLimits(write_timeout=0.05))
        with pytest.raises(ConnectionError, match="write_timeout"):
            await session.send(Finish("r", "done"))
        assert stream.blocked.is_set()
        assert session.closed.is_set() and "not reading" in session.close_reason
        assert session.close_code is grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())


async def _until(condition, within: float) -> None:
    """Waits (bounded by ``within``) until ``condition()`` holds: the session's reader runs on the same loop."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_the_session_stops_reading_when_its_byte_budget_is_full_and_loses_nothing():
    """Back-pressure: 10 messages of 512 KiB for a run that does not read them. With a budget of 3 MiB (1 MiB of
    it for the unfinished message) the session reads until 2 MiB are queued, then leaves the rest in the stream
    (on a real stream gRPC's flow control then stops the client); every message still arrives, in order."""

    async def main():
        limits = SessionLimits(max_payload_bytes=1 << 20, memory_bytes=3 << 20)
        session, client, stream, reader = await _session(limits)
        session.in_run = "r"
        peak = 0
        read = stream.read

        async def measured_read():
            nonlocal peak
            peak = max(peak, session.buffered_bytes)
            return await read()

        stream.read = measured_read
        sent = [CutTensor(StepRef("r", 0, i, Phase.TRAIN), torch.full((128 << 10,), float(i))) for i in range(10)]
        for message in sent:
            await client.send(message)
        await _until(lambda: not session._room.is_set() or stream.incoming.empty(), 5)
        assert session.queued_bytes > limits.inbox_room  # it stopped because the budget was full ...
        assert not stream.incoming.empty()  # ... leaving the rest unread
        for i in range(10):
            got = await session.next(5)
            assert got.ref.step == i and torch.equal(got.tensor, sent[i].tensor)
        assert peak <= limits.memory_bytes and session.queued_bytes == 0
        stream.end()
        await reader

    asyncio.run(main())


def test_an_unfinished_transfer_past_its_deadline_closes_the_session_and_frees_its_buffer():
    async def main():
        session, client, stream, reader = await _session(SessionLimits(transfer_timeout=0.2))
        chunk = tensor_pb2.Chunk(transfer_id=1, index=0, count=3, total_bytes=3000, crc32=0, data=b"x" * 1000)
        stream.incoming.put_nowait(session_pb2.ClientMessage(seq=1, chunk=chunk))
        await asyncio.wait_for(reader, 5)
        assert session.close_code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "unfinished after 0.2 s (transfer_timeout)" in session.close_reason

    asyncio.run(main())


def test_messages_by_kind_survive_a_reconnect_and_are_counted_once():
    async def main():
        registry = SessionRegistry()
        first = Session("c1", "a", stream_pair()[0], registry.limits)
        first.counter.received("model_state", up=True)
        first.counter.received("cut_tensor", up=True)
        first.counter.received("welcome", up=False)  # what the server sent is not what the client sent
        await registry.add(first)
        second = Session("c1", "b", stream_pair()[0], registry.limits)
        await registry.add(second)  # a reconnect: the first session's kinds are retired
        second.counter.received("cut_tensor", up=True)
        await registry.remove(first)  # the replaced session unwinding adds nothing twice
        assert registry.client_kinds("c1") == {"model_state": 1, "cut_tensor": 2}
        await registry.remove(second)
        assert registry.client_kinds("c1") == {"model_state": 1, "cut_tensor": 2}
        assert registry.client_kinds("nobody") == {}

    asyncio.run(main())
