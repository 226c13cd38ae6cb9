"""Session framing shared by both ends of the stream: sequence numbers, chunking, attachments, byte accounting.

Every envelope (``ClientMessage``/``ServerMessage``) on the wire gets a strictly increasing ``seq``, so a
message replayed after a reconnect is recognised and dropped. An envelope whose serialized size is above
the chunk threshold is sent as a series of ``Chunk`` envelopes of about 1 MiB (gRPC moves big payloads
several times faster that way, and no single message ever nears the receive limit). Big tensors do not go
through protobuf at all: their bytes follow the message as *attachments*, chunked transfers sliced straight
out of the tensor's memory and reassembled into one writable buffer that the tensor is decoded from in place.
Bytes are counted
here, at the transport, as the exact serialized size of every envelope in each direction.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from slperf.common.protocol.errors import WireError
from slperf.common.wire.chunking import DEFAULT_CHUNK_BYTES, ChunkEnvelope, RawChunk, Reassembler, iter_chunks

E = TypeVar("E")  # ClientMessage or ServerMessage

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 30


@dataclass
class ByteCounter:
    """Exact serialized bytes per direction, bucketed by a label the owner sets (e.g. the round)."""

    up: int = 0
    down: int = 0
    messages_up: int = 0
    messages_down: int = 0
    by_label: dict[str, list[int]] = field(default_factory=dict)
    label: str = ""
    # Messages received, by the kind of their body (``model_state``, ``cut_tensor``...), counted when a message's
    # envelope is complete (a chunked one once reassembled), before its attachments or any check: what crossed.
    kinds_up: dict[str, int] = field(default_factory=dict)
    kinds_down: dict[str, int] = field(default_factory=dict)

    def received(self, kind: str | None, *, up: bool) -> None:
        kind = kind or NO_BODY  # an envelope without a body is junk, but it crossed: counted under a name that sorts
        kinds = self.kinds_up if up else self.kinds_down
        kinds[kind] = kinds.get(kind, 0) + 1

    def add(self, *, up: int = 0, down: int = 0) -> None:
        self.up += up
        self.down += down
        self.messages_up += 1 if up else 0
        self.messages_down += 1 if down else 0
        bucket = self.by_label.setdefault(self.label, [0, 0])
        bucket[0] += up
        bucket[1] += down


# A message may announce at most this many attachments (a ResNet-56 state has ~340 tensors, most inline).
MAX_ATTACHMENTS = 4096


@dataclass(frozen=True, slots=True)
class Inbound(Generic[E]):
    """A complete incoming message and the raw bytes of its attachments (``Tensor.attachment`` k is
    ``bulk[k - 1]``), which ``codec.decode_tensor`` reads without another copy."""

    message: E
    bulk: tuple[bytes | memoryview, ...] = ()


class Framer(Generic[E]):
    """Turns outgoing messages into envelopes: assigns seq, chunks big ones, sends attachments, counts bytes."""

    def __init__(
        self,
        envelope_type: type[E],
        counter: ByteCounter,
        *,
        outgoing_is_up: bool,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ):
        self._type = envelope_type
        self._seq = itertools.count(1)
        self._transfer = itertools.count(1)
        self._counter = counter
        self._up = outgoing_is_up
        self.chunk_bytes = chunk_bytes

    def frames(self, message: E, bulk: Sequence[memoryview] = ()) -> Iterator[E | ChunkEnvelope]:
        """The envelopes of ``message`` and then of each attachment in ``bulk`` (from ``codec.encode_tensor``),
        built one at a time as the caller writes them.

        The attachments are sent straight from the tensors' memory: they must not change until the last envelope
        has been taken. A message above the chunk threshold is serialised once and sent as chunks.
        """
        message.attachments = len(bulk)  # type: ignore[attr-defined]
        message.seq = next(self._seq)  # type: ignore[attr-defined]
        size = message.ByteSize()  # type: ignore[attr-defined]
        if size <= self.chunk_bytes:
            self._count(size)
            yield message
        else:
            yield from self._chunked(message.SerializeToString())  # type: ignore[attr-defined]
        for payload in bulk:
            yield from self._chunked(payload)

    def _chunked(self, payload: bytes | memoryview) -> Iterator[ChunkEnvelope]:
        for chunk in iter_chunks(payload, next(self._transfer), self.chunk_bytes):
            envelope = ChunkEnvelope(self._type, next(self._seq), chunk)
            self._count(envelope.ByteSize())
            yield envelope

    def _count(self, n: int) -> None:
        self._counter.add(**({"up": n} if self._up else {"down": n}))


class _Pending:
    __slots__ = ("message", "expected", "bulk", "bytes", "started")

    def __init__(self, message: Any, expected: int) -> None:
        self.started = time.monotonic()
        self.message = message
        self.expected = expected
        self.bulk: list[bytes | memoryview] = []
        self.bytes = 0


NO_BODY = "(no body)"  # the kind counted for an envelope that carries no body (a peer's junk)


class Deframer(Generic[E]):
    """Checks incoming envelopes: seq strictly increasing, chunks reassembled, attachments collected; counts
    bytes."""

    def __init__(
        self,
        envelope_type: type[E],
        counter: ByteCounter,
        *,
        incoming_is_up: bool,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ):
        self._type = envelope_type
        self._last_seq = 0
        self._counter = counter
        self._up = incoming_is_up
        self._max_payload = max_payload_bytes
        self._reassembler = Reassembler(max_payload_bytes)
        self._pending: _Pending | None = None  # a message whose attachments are still arriving

    @property
    def buffered_bytes(self) -> int:
        """What the unfinished message holds: the attachments received so far and every open transfer's
        announced size. At most ``max_payload_bytes``: one budget for all of it."""
        pending = self._pending.bytes if self._pending is not None else 0
        return pending + self._reassembler.open_bytes

    @property
    def unfinished_since(self) -> float | None:
        """``time.monotonic()`` when the unfinished message (its first chunk, or the message whose attachments
        are awaited) began; None when nothing is unfinished. The receiver bounds how long that may last."""
        started = [t for t in (self._reassembler.opened_at, self._pending and self._pending.started) if t]
        return min(started) if started else None

    def feed(self, envelope: E) -> Inbound[E] | None:
        """Returns the complete message, None while a chunked one or its attachments are still arriving; raises
        WireError (and forgets the incomplete message) for anything out of protocol."""
        seq = envelope.seq  # type: ignore[attr-defined]
        kind = envelope.WhichOneof("body")  # type: ignore[attr-defined]
        data = envelope.chunk.data if kind == "chunk" else None  # type: ignore[attr-defined]
        if data is None or isinstance(envelope, ChunkEnvelope):
            self._count(envelope.ByteSize())  # type: ignore[attr-defined]
        else:
            self._count(_chunk_envelope_size(envelope, data))
        if seq <= self._last_seq:
            raise WireError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"message seq {seq} is not after {self._last_seq}: duplicate or replayed message dropped",
            )
        self._last_seq = seq
        pending = self._pending
        if pending is not None:
            return self._attachment(pending, envelope, kind, data)
        if kind != "chunk":
            return self._complete(envelope)
        payload = self._reassembler.feed(envelope.chunk, data)  # type: ignore[attr-defined]
        if payload is None:
            return None
        inner = self._type()
        try:
            inner.ParseFromString(payload)  # type: ignore[attr-defined]
        except Exception:  # protobuf raises DecodeError; any parse failure is the sender's fault
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "reassembled chunks do not parse as a message") from None
        if inner.WhichOneof("body") in (None, "chunk"):  # type: ignore[attr-defined]
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "a chunked transfer must carry one non-chunk message")
        return self._complete(inner)

    def _complete(self, message: E) -> Inbound[E] | None:
        self._counter.received(message.WhichOneof("body"), up=self._up)  # type: ignore[attr-defined]
        expected = message.attachments  # type: ignore[attr-defined]
        if not expected:
            return Inbound(message)
        if expected > MAX_ATTACHMENTS:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a message announces {expected} attachments; at most {MAX_ATTACHMENTS} are allowed",
            )
        self._pending = _Pending(message, expected)
        return None

    def _attachment(self, pending: _Pending, envelope: E, kind: str | None, data: bytes | None) -> Inbound[E] | None:
        if kind != "chunk":
            self._drop_pending()
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expected attachment {len(pending.bulk) + 1} of {pending.expected} of the "
                f"{pending.message.WhichOneof('body')} message, got {kind}; both dropped",
            )
        chunk = envelope.chunk  # type: ignore[attr-defined]
        if chunk.index == 0 and self.buffered_bytes + chunk.total_bytes > self._max_payload:
            self._drop_pending()
            raise WireError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the attachments of a message would exceed {self._max_payload} bytes in total",
            )
        try:
            payload = self._reassembler.feed(chunk, data)
        except WireError:
            self._drop_pending()
            raise
        if payload is None:
            return None
        pending.bulk.append(payload)
        pending.bytes += len(payload)
        if len(pending.bulk) < pending.expected:
            return None
        self._pending = None
        return Inbound(pending.message, tuple(pending.bulk))

    def _drop_pending(self) -> None:
        self._pending = None
        self._reassembler.reset()

    def _count(self, n: int) -> None:
        self._counter.add(**({"up": n} if self._up else {"down": n}))


def _chunk_envelope_size(envelope: Any, data: bytes) -> int:
    """The serialized size of a chunk envelope, from its fields: ``ByteSize()`` would serialise the chunk's
    megabyte again just to measure it."""
    chunk = envelope.chunk
    return ChunkEnvelope(
        type(envelope),
        envelope.seq,
        RawChunk(chunk.transfer_id, chunk.index, chunk.count, chunk.total_bytes, chunk.crc32, data),
    ).ByteSize()
