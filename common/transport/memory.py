"""An in-memory session stream: the two ends of one client's session inside one process and one event loop,
for the simulation backend (``slperf.sim``), where every party runs in the same process.

Each end satisfies what an ``Endpoint`` needs of a stream (``Stream``), and the server's end what the session
handler needs of a gRPC context (``SessionContext``: ``peer``, ``abort``), the client's end what the client daemon
needs of a gRPC call (``SessionCall``: ``done_writing``, ``code``, ``details``). So the server's and the client
daemon's own conversation code runs over it unchanged.

What crosses is what gRPC would carry: every envelope is serialised with the session stream's own serializer and
parsed on the other side with its own deserializers (``slperf.common.transport.channel``), so the receiver gets
fresh objects exactly as over the network (never a view of the sender's tensors, which it may change once a send
returns), and the byte counts, which the endpoints take from the envelopes, are the network's. Each direction is
a bounded FIFO of envelopes: a writer whose reader has fallen ``capacity`` envelopes behind waits, as one whose
HTTP/2 window is full does, so back-pressure exists.

Half-closes follow gRPC: the client ends its direction with ``done_writing`` (the server reads EOF); the server
ends the stream by returning from its handler or by aborting, which queues EOF after what it already wrote and
sets the status the client reads; from then on the client's writes fail, as writes to a finished call do.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from slperf.common.transport.channel import envelope_parser, serialize_envelope, session_request_parser
from slperf.v1 import session_pb2

DEFAULT_CAPACITY = 16  # envelopes in flight per direction (a chunk is at most ~1 MiB)


class LinkClosed(ConnectionError):
    """A write to a direction whose reader is gone (the stream ended)."""


class _Pipe:
    """One direction: a bounded FIFO of serialised envelopes, ended by its writer or broken by its reader."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"a memory link needs a capacity of at least 1 envelope, got {capacity}")
        self._items: deque[bytes] = deque()
        self._capacity = capacity
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.ended = False  # the writer is done: the reader gets EOF after what is queued
        self.broken = False  # the reader is gone: writes fail

    async def put(self, data: bytes) -> None:
        while True:
            if self.broken:
                raise LinkClosed("the stream has ended")
            if self.ended:
                raise LinkClosed("write after the end of this direction")
            if len(self._items) < self._capacity:
                break
            self._writable.clear()
            await self._writable.wait()
        self._items.append(data)
        self._readable.set()

    async def get(self) -> bytes | None:
        """The next envelope's bytes; None once the writer ended this direction and everything was read."""
        while not self._items:
            if self.ended or self.broken:
                return None
            self._readable.clear()
            await self._readable.wait()
        data = self._items.popleft()
        self._writable.set()
        return data

    def end(self) -> None:
        self.ended = True
        self._readable.set()

    def break_(self) -> None:
        self.broken = True
        self._items.clear()
        self._readable.set()
        self._writable.set()


class MemoryLink:
    """One session stream between a client and the server, in memory: ``server`` and ``client`` are its ends."""

    def __init__(self, peer: str, capacity: int = DEFAULT_CAPACITY):
        self._up = _Pipe(capacity)  # client -> server
        self._down = _Pipe(capacity)  # server -> client
        self._status: asyncio.Future[tuple[grpc.StatusCode, str]] = asyncio.get_running_loop().create_future()
        self.server = ServerEnd(self, peer)
        self.client = ClientEnd(self)

    @property
    def finished(self) -> bool:
        return self._status.done()

    def finish(self, code: grpc.StatusCode = grpc.StatusCode.OK, details: str = "") -> None:
        """The server's handler is over: the client reads what was written, then EOF, then this status. Only the
        first status counts (an abort, then the handler's end)."""
        if self._status.done():
            return
        self._status.set_result((code, details))
        self._down.end()
        self._up.break_()

    async def status(self) -> tuple[grpc.StatusCode, str]:
        return await asyncio.shield(self._status)


class ServerEnd:
    """The server's end: a ``SessionContext``. Reads parse with the server's never-raising request parser."""

    def __init__(self, link: MemoryLink, peer: str):
        self._link = link
        self._peer = peer
        self._parse: Callable[[bytes], Any] = session_request_parser()

    async def read(self) -> Any:
        data = await self._link._up.get()
        return grpc.aio.EOF if data is None else self._parse(data)

    async def write(self, envelope: Any) -> None:
        if self._link.finished:
            raise LinkClosed("the session handler has ended")
        await self._link._down.put(serialize_envelope(envelope))

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self._link.finish(code, details)
        raise grpc.aio.AbortError(details)


class ClientEnd:
    """The client's end: a ``SessionCall``. Reads parse with the client's response parser."""

    def __init__(self, link: MemoryLink):
        self._link = link
        self._parse: Callable[[bytes], Any] = envelope_parser(session_pb2.ServerMessage)

    async def read(self) -> Any:
        data = await self._link._down.get()
        return grpc.aio.EOF if data is None else self._parse(data)

    async def write(self, envelope: Any) -> None:
        await self._link._up.put(serialize_envelope(envelope))

    async def done_writing(self) -> None:
        self._link._up.end()

    async def code(self) -> grpc.StatusCode:
        return (await self._link.status())[0]

    async def details(self) -> str | None:
        return (await self._link.status())[1]
