"""An in-memory session stream for server unit tests: the server's Session on one end, a client Endpoint on the
other, every envelope serialised and parsed as gRPC would (the real session (de)serializers)."""

from __future__ import annotations

import asyncio

import grpc

from slperf.common.transport.channel import envelope_parser, serialize_envelope
from slperf.common.transport.endpoint import ClientEndpoint, Endpoint, Side
from slperf.v1 import session_pb2


class QueueStream:
    def __init__(self, incoming: asyncio.Queue, outgoing: asyncio.Queue, written_type) -> None:
        self.incoming, self.outgoing = incoming, outgoing
        self._parse = envelope_parser(written_type)

    async def write(self, envelope) -> None:
        await self.outgoing.put(self._parse(serialize_envelope(envelope)))

    async def read(self):
        return await self.incoming.get()

    def end(self) -> None:
        """The peer ends the stream."""
        self.incoming.put_nowait(grpc.aio.EOF)


def stream_pair() -> tuple[QueueStream, ClientEndpoint]:
    """(the server side's stream, the client's endpoint on the other end)."""
    up: asyncio.Queue = asyncio.Queue()
    down: asyncio.Queue = asyncio.Queue()
    server_stream = QueueStream(up, down, session_pb2.ServerMessage)
    client = Endpoint(QueueStream(down, up, session_pb2.ClientMessage), Side.CLIENT, name="client")
    return server_stream, client
