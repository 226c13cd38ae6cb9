"""One side of a session stream, the same class in both daemons: framing out, deframing and decoding in.

An ``Endpoint`` turns protocol messages (``slperf.common.protocol.messages``) into envelopes on the stream and
back. Sending holds a lock, because several tasks may write to one stream (the run, an in-stream error) and a
message's envelopes and attachments must not interleave with another's. Receiving returns one complete,
decoded, validated message at a time (each tensor decoded once, by ``serde``); a bad message raises
``WireError`` and the stream stays usable, so the owner decides whether to answer it (the server) or log it
(the client). Byte counts are exact, per direction, at this one place.

Observers registered with ``observe_endpoints`` see every endpoint made in the process (the benchmarks read
byte and message counts that way): an explicit hook, so nothing needs to patch a constructor.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import grpc

from slperf.common.protocol.errors import WireError
from slperf.common.protocol.messages import ClientMessage, ErrorReport, ServerMessage, Welcome
from slperf.common.transport.channel import Malformed
from slperf.common.transport.rate import Pacer
from slperf.common.wire import serde
from slperf.common.wire.codec import DEFAULT_LIMITS, TensorLimits
from slperf.common.wire.framing import DEFAULT_MAX_PAYLOAD_BYTES, ByteCounter, Deframer, Framer
from slperf.v1 import session_pb2

Out = TypeVar("Out")
In = TypeVar("In")


class Side(enum.Enum):
    """Which daemon holds the endpoint: a client sends ClientMessages up, a server ServerMessages down."""

    CLIENT = "client"
    SERVER = "server"


class Stream(Protocol):
    """What an endpoint needs of a gRPC stream: the client's call and the server's context both fit."""

    async def write(self, envelope: Any) -> None: ...

    async def read(self) -> Any: ...


class SessionContext(Stream, Protocol):
    """The server's end of a session stream as its handler uses it: grpc's ``ServicerContext`` fits, and so does the
    simulation's in-memory end (``slperf.common.transport.memory``). ``peer`` says who is on the other end; ``abort``
    ends the stream with a status and raises ``grpc.aio.AbortError`` (the handler lets it through)."""

    def peer(self) -> str: ...

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn: ...


class SessionCall(Stream, Protocol):
    """The client's end of a session stream: grpc's ``StreamStreamCall`` fits, and so does the in-memory one.
    ``code``/``details`` are the status the server ended the stream with (they wait for it)."""

    async def done_writing(self) -> None: ...

    async def code(self) -> grpc.StatusCode: ...

    async def details(self) -> str | None: ...


class StreamBroken(ConnectionError):
    """A write to the stream failed, or did not finish within the endpoint's write deadline: the peer is gone or has
    stopped reading. Either way the stream is unusable; its owner ends the session (nothing else is wrong)."""


class TransferStalled(ConnectionError):
    """An unfinished message (a chunked transfer, or attachments announced and not all sent) was not completed
    within the endpoint's transfer deadline: the peer holds buffer space it does not use. The owner ends the
    stream, which frees the buffers."""


EndpointObserver = Callable[["Endpoint[Any, Any]"], None]
_observers: list[EndpointObserver] = []


def observe_endpoints(observer: EndpointObserver) -> Callable[[], None]:
    """Calls ``observer`` with every endpoint made from now on in this process; returns the unsubscribe."""
    _observers.append(observer)
    return lambda: _observers.remove(observer)


# Room an envelope needs besides its chunk's bytes (seq, transfer id, index, count, total, crc, field tags): a chunk
# of max_envelope_bytes minus this always fits in one envelope of at most max_envelope_bytes.
ENVELOPE_HEADROOM = 1024
# A client paces itself below the rate a server announced: the server counts envelopes as it reads them, and
# the network can bunch envelopes sent evenly, so pacing at exactly its rate could still be refused.
PACING_MARGIN = 0.9


class Endpoint(Generic[Out, In]):
    def __init__(
        self,
        stream: Stream,
        side: Side,
        *,
        name: str = "",
        limits: TensorLimits = DEFAULT_LIMITS,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        admit: Callable[[], None] | None = None,
        write_timeout: float | None = None,
        transfer_timeout: float | None = None,
        max_bytes_per_second: float | None = None,
    ):
        """``admit`` is called for every envelope before it is read further and may raise WireError to refuse it
        (the server's per-session rate limit); ``name`` says whose endpoint it is (a client id). ``write_timeout``
        bounds each single write (one envelope of at most a chunk): a peer that stops reading fills its HTTP/2
        window and would otherwise block the writer forever. ``transfer_timeout`` bounds how long an unfinished
        incoming message may stay unfinished (from its first chunk): past it :meth:`receive` raises
        TransferStalled. ``max_bytes_per_second`` throttles reading: past that rate the next read waits until the
        bytes already received are paid for (nothing is dropped; gRPC's flow control slows the peer)."""
        self.stream = stream
        self.side = side
        self.name = name
        self.limits = limits
        self.counter = ByteCounter()
        up = side is Side.CLIENT
        outgoing = session_pb2.ClientMessage if up else session_pb2.ServerMessage
        incoming = session_pb2.ServerMessage if up else session_pb2.ClientMessage
        self._framer = Framer(outgoing, self.counter, outgoing_is_up=up)
        self._deframer = Deframer(incoming, self.counter, incoming_is_up=not up, max_payload_bytes=max_payload_bytes)
        self._encode: Callable[[Any], tuple[Any, list[memoryview]]] = serde.client_to_pb if up else serde.server_to_pb
        self._decode: Callable[..., Any] = serde.server_from_pb if up else serde.client_from_pb
        self._admit = admit
        self._send_lock = asyncio.Lock()
        self.write_timeout = write_timeout
        self.transfer_timeout = transfer_timeout
        self._byte_rate = max_bytes_per_second
        self._byte_credit = max_bytes_per_second or 0.0  # one second's worth of burst
        self._byte_stamp = time.monotonic()
        self._bytes_paid = 0
        self.pacer: Pacer | None = None  # set by follow(): this side's own envelope rate
        self._max_send_payload: int | None = None
        for observer in list(_observers):
            observer(self)

    def follow(self, welcome: Welcome) -> None:
        """Keeps this (client) side within the limits the server's Welcome announced, so that it stays inside them
        rather than finding them from refusals: chunks that fit the largest envelope, no message above the largest
        payload, and envelopes paced below the session's rate. A zero in the Welcome means no such limit."""
        if welcome.max_envelope_bytes:
            room = max(1, welcome.max_envelope_bytes - ENVELOPE_HEADROOM)
            self._framer.chunk_bytes = min(self._framer.chunk_bytes, room)
        self._max_send_payload = welcome.max_payload_bytes or None
        if welcome.messages_per_second > 0:
            self.pacer = Pacer(welcome.messages_per_second * PACING_MARGIN, max(1, welcome.message_burst // 2))

    async def send(self, message: Out) -> None:
        """Sends ``message`` and its attachments as one unit. Attachments are sliced from the tensors' memory:
        the tensors must not change until this returns. Raises StreamBroken when the stream cannot take it, and
        WireError (RESOURCE_EXHAUSTED, nothing sent) for a message above the peer's announced largest payload."""
        envelope, bulk = self._encode(message)
        if self._max_send_payload is not None:
            size = sum(len(b) for b in bulk) + envelope.ByteSize()
            if size > self._max_send_payload:
                raise WireError.exhausted(
                    f"a {type(message).__name__} of {size} bytes is more than the {self._max_send_payload} bytes "
                    f"the server takes in one message (its Welcome's max_payload_bytes); not sent"
                )
        async with self._send_lock:
            for frame in self._framer.frames(envelope, bulk):
                if self.pacer is not None:
                    await self.pacer.wait()
                await self._write(frame)

    async def _write(self, frame: Any) -> None:
        # Whatever a failed write raises (grpc's AioRpcError, its internal ExecuteBatchError once the call is gone,
        # RuntimeError/InvalidStateError after the RPC ended) means one thing to every caller: the peer is gone.
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.stream.write(frame)
        except TimeoutError:
            raise StreamBroken(
                f"the peer is not reading: a write waited more than {self.write_timeout:g} s (write_timeout)"
            ) from None
        except Exception as exc:
            raise StreamBroken(f"write failed: {type(exc).__name__}: {exc}") from None

    async def send_error(self, code: grpc.StatusCode, message: str) -> None:
        """An in-stream error; a stream that is already gone is not an error of its own."""
        try:
            await self.send(ErrorReport(code, message))  # type: ignore[arg-type]  # both sides may send one
        except StreamBroken:
            pass

    async def receive(self) -> In | None:
        """The next complete message, decoded and validated; None when the peer ends the stream.

        Raises WireError for a message that is out of protocol (the message is dropped, the stream goes on).
        """
        while True:
            envelope = await self._read()
            if envelope is grpc.aio.EOF:
                return None
            if self._admit is not None:
                self._admit()
            if isinstance(envelope, Malformed):  # bytes that did not parse (see channel.never_raising)
                self.counter.add(**({"down": envelope.size} if self.side is Side.CLIENT else {"up": envelope.size}))
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, envelope.reason)
            inbound = self._deframer.feed(envelope)
            if inbound is not None:
                decoded: In = self._decode(inbound, self.limits)
                return decoded

    @property
    def buffered_bytes(self) -> int:
        """Bytes an unfinished incoming message holds (at most ``max_payload_bytes``)."""
        return self._deframer.buffered_bytes

    def _received_bytes(self) -> int:
        return self.counter.down if self.side is Side.CLIENT else self.counter.up

    async def _throttle(self) -> None:
        rate = self._byte_rate
        if rate is None:
            return
        received = self._received_bytes()
        now = time.monotonic()
        credit = min(rate, self._byte_credit + (now - self._byte_stamp) * rate) - max(0, received - self._bytes_paid)
        self._bytes_paid, self._byte_stamp = received, now
        if credit < 0:
            await asyncio.sleep(-credit / rate)
            self._byte_stamp = time.monotonic()
            credit = 0.0
        self._byte_credit = credit

    async def _read(self) -> Any:
        await self._throttle()
        since = self._deframer.unfinished_since
        if self.transfer_timeout is None or since is None:
            return await self.stream.read()
        remaining = since + self.transfer_timeout - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                return await self.stream.read()
        except TimeoutError:
            raise TransferStalled(
                f"a message of {self._deframer.buffered_bytes} buffered bytes is still unfinished after "
                f"{self.transfer_timeout:g} s (transfer_timeout)"
            ) from None


ClientEndpoint = Endpoint[ClientMessage, ServerMessage]
ServerEndpoint = Endpoint[ServerMessage, ClientMessage]
