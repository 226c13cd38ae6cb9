"""Splitting big payloads into ~1 MiB ``Chunk`` messages and putting them back together with integrity checks.

gRPC moves a big payload several times faster as a stream of ~1 MiB messages than as one huge message, and no
single message then comes near the receive limit. Every chunk carries the transfer's chunk count, total length
and the CRC-32 of the whole payload, so the receiver can refuse a transfer on its first chunk (too big) and
check the result at the end (length and checksum).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from slperf.common.protocol.errors import WireError
from slperf.v1 import tensor_pb2

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "ChunkEnvelope",
    "RawChunk",
    "Reassembler",
    "iter_chunks",
    "parse_chunk_envelope",
    "split_payload",
]

DEFAULT_CHUNK_BYTES = 1 << 20
_UINT32_MAX = (1 << 32) - 1
_UINT64_MAX = (1 << 64) - 1
_DATA_TAG = bytes([6 << 3 | 2])  # Chunk.data: field 6, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    """A proto3 scalar field as the runtime writes it: omitted when zero."""
    return _varint(number << 3) + _varint(value) if value else b""


@dataclass(slots=True)
class RawChunk:
    """One ``Chunk`` whose ``data`` is still a view of the sender's buffer.

    A protobuf ``Chunk`` built from a 1 MiB slice copies it once into ``bytes`` and once more into the message,
    and serialising the envelope copies it a third time. A RawChunk writes the protobuf wire format itself
    (a few varints, then the data), so the slice is copied exactly once, into the bytes handed to gRPC.
    """

    transfer_id: int
    index: int
    count: int
    total_bytes: int
    crc32: int
    data: bytes | memoryview

    def header(self) -> bytes:
        """The Chunk's fields 1-5 and the tag and length of ``data``."""
        head = (
            _varint_field(1, self.transfer_id)
            + _varint_field(2, self.index)
            + _varint_field(3, self.count)
            + _varint_field(4, self.total_bytes)
            + _varint_field(5, self.crc32)
        )
        return head + _DATA_TAG + _varint(len(self.data)) if len(self.data) else head

    def to_pb(self) -> tensor_pb2.Chunk:
        return tensor_pb2.Chunk(
            transfer_id=self.transfer_id,
            index=self.index,
            count=self.count,
            total_bytes=self.total_bytes,
            crc32=self.crc32,
            data=bytes(self.data),
        )


class ChunkEnvelope:
    """A ``ClientMessage``/``ServerMessage`` whose body is one RawChunk, serialised and parsed by hand.

    It answers the part of the protobuf message API the transport uses (``seq``, ``WhichOneof``, ``ByteSize``,
    ``SerializeToString``, ``chunk``), so the session's gRPC serializer (``transport.channel.serialize_envelope``) sends
    it like any other envelope, and :func:`parse_chunk_envelope` hands the receiver one whose ``chunk.data``
    is a view of the received bytes (the protobuf runtime would copy them twice: into the message, then out of
    the field).
    """

    __slots__ = ("seq", "chunk", "_head", "_size")

    def __init__(self, envelope_type: type[Any], seq: int, chunk: RawChunk, *, wire_size: int | None = None):
        self.seq = seq
        self.chunk = chunk
        self._head = b""
        self._size = wire_size
        if wire_size is None:
            body_head = chunk.header()
            body_len = len(body_head) + len(chunk.data)
            field = envelope_type.DESCRIPTOR.fields_by_name["chunk"].number
            self._head = _varint_field(1, seq) + _varint(field << 3 | 2) + _varint(body_len) + body_head

    def WhichOneof(self, _group: str) -> str:  # noqa: N802 - the protobuf API's spelling
        return "chunk"

    def ByteSize(self) -> int:  # noqa: N802
        return self._size if self._size is not None else len(self._head) + len(self.chunk.data)

    def SerializeToString(self) -> bytes:  # noqa: N802
        if self._size is not None:
            raise TypeError("a received chunk envelope is not sent on")
        return b"".join((self._head, self.chunk.data))


class _NotFast(Exception):
    """The bytes are not a plain chunk envelope; the protobuf runtime parses them instead."""


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _NotFast
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


_CHUNK_LIMITS = {1: _UINT64_MAX, 2: _UINT32_MAX, 3: _UINT32_MAX, 4: _UINT64_MAX, 5: _UINT32_MAX}


def parse_chunk_envelope(buf: bytes, envelope_type: type[Any]) -> ChunkEnvelope | None:
    """``buf`` as a ChunkEnvelope when it is exactly an envelope with a ``seq`` and a ``Chunk`` body (the only
    fields, each at most once, values in range), else None: the caller then parses it with the protobuf
    runtime, which accepts and refuses exactly what it always did. ``chunk.data`` is a zero-copy view."""
    chunk_field = envelope_type.DESCRIPTOR.fields_by_name["chunk"].number
    try:
        pos, seq, body = 0, 0, None
        while pos < len(buf):
            tag, pos = _read_varint(buf, pos)
            if tag == 1 << 3 and seq == 0:
                seq, pos = _read_varint(buf, pos)
                if seq > _UINT64_MAX:
                    raise _NotFast
            elif tag == (chunk_field << 3 | 2) and body is None:
                length, pos = _read_varint(buf, pos)
                body = (pos, pos + length)
                pos += length
            else:
                raise _NotFast
        if body is None or pos != len(buf):
            raise _NotFast
        values = dict.fromkeys(_CHUNK_LIMITS, 0)
        data = memoryview(b"")
        pos, end, seen = body[0], body[1], set()
        while pos < end:
            tag, pos = _read_varint(buf, pos)
            number, wire_type = tag >> 3, tag & 7
            if number in seen:
                raise _NotFast
            seen.add(number)
            if number in _CHUNK_LIMITS and wire_type == 0:
                values[number], pos = _read_varint(buf, pos)
                if values[number] > _CHUNK_LIMITS[number]:
                    raise _NotFast
            elif number == 6 and wire_type == 2:
                length, pos = _read_varint(buf, pos)
                if pos + length > end:
                    raise _NotFast
                data = memoryview(buf)[pos : pos + length]
                pos += length
            else:
                raise _NotFast
        if pos != end:
            raise _NotFast
    except _NotFast:
        return None
    chunk = RawChunk(values[1], values[2], values[3], values[4], values[5], data)
    return ChunkEnvelope(envelope_type, seq, chunk, wire_size=len(buf))


def iter_chunks(
    payload: bytes | bytearray | memoryview, transfer_id: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[RawChunk]:
    """The payload as ``ceil(len / chunk_bytes)`` chunks (at least one, even when empty), each carrying the
    CRC-32 of the whole payload and a zero-copy view of its slice; built only when asked for (streaming)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    if not 0 <= transfer_id <= _UINT64_MAX:
        raise ValueError(f"transfer_id must fit in uint64, got {transfer_id}")
    view = memoryview(payload).cast("B")
    total = len(view)
    count = max(1, -(-total // chunk_bytes))
    if count > _UINT32_MAX:
        raise ValueError(f"{total} bytes in chunks of {chunk_bytes} would need {count} chunks, more than uint32 holds")
    crc = zlib.crc32(view)
    return (
        RawChunk(transfer_id, i, count, total, crc, view[i * chunk_bytes : (i + 1) * chunk_bytes]) for i in range(count)
    )


def split_payload(
    payload: bytes | bytearray | memoryview, transfer_id: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[tensor_pb2.Chunk]:
    """:func:`iter_chunks` as protobuf ``Chunk`` messages (each owning a copy of its slice)."""
    return [c.to_pb() for c in iter_chunks(payload, transfer_id, chunk_bytes)]


class _Transfer:
    __slots__ = ("count", "total", "crc", "buffer", "received", "filled", "running_crc", "started")

    def __init__(self, count: int, total: int, crc: int) -> None:
        self.started = time.monotonic()
        self.count = count
        self.total = total
        self.crc = crc
        # The exact-size result, filled in place as chunks arrive; a one-chunk transfer returns its chunk instead.
        # numpy's allocator (measured): uninitialised, reused and huge-page backed, where a bytearray would be
        # zero-filled first and fault in every page afresh: 10 ms against 54 ms for 64 MiB here.
        self.buffer = np.empty(total, dtype=np.uint8) if count > 1 else None
        self.received = 0  # chunks so far
        self.filled = 0
        self.running_crc = 0  # CRC-32 of the bytes received so far, updated while they are still in cache


class Reassembler:
    """Puts chunked transfers back together; one instance per stream (not thread-safe).

    ``feed`` returns the payload when the last chunk of a transfer arrived, None before. Chunks of one transfer
    must arrive in order from index 0; transfers may interleave, at most ``max_open_transfers`` at a time, all of
    them together at most ``max_total_bytes`` long (refused on its first chunk, before anything is buffered), so
    what one stream can make the receiver buffer is bounded by one payload, not by one per open transfer. Any WireError
    drops the transfer it concerns, freeing what was buffered for it.

    Buffering: a multi-chunk transfer is copied into one exact-size buffer as its chunks arrive (allocated on the
    first chunk, after the size check), and a writable memoryview of it is the result, so a tensor decoded from
    it needs no further copy. A single-chunk transfer returns the chunk's own data.
    """

    def __init__(self, max_total_bytes: int, max_open_transfers: int = 4) -> None:
        if max_total_bytes < 0 or max_open_transfers < 1:
            raise ValueError(
                f"need max_total_bytes >= 0 and max_open_transfers >= 1, got {max_total_bytes} and {max_open_transfers}"
            )
        self.max_total_bytes = max_total_bytes
        self.max_open_transfers = max_open_transfers
        self._open: dict[int, _Transfer] = {}

    @property
    def open_transfers(self) -> int:
        """How many transfers have started and not finished."""
        return len(self._open)

    @property
    def open_bytes(self) -> int:
        """The bytes the open transfers announced (what their buffers hold once full)."""
        return sum(transfer.total for transfer in self._open.values())

    @property
    def opened_at(self) -> float | None:
        """``time.monotonic()`` when the oldest open transfer began; None when none is open."""
        return min((transfer.started for transfer in self._open.values()), default=None)

    def reset(self) -> None:
        """Drops every partially received transfer."""
        self._open.clear()

    def feed(
        self, chunk: tensor_pb2.Chunk | RawChunk, data: bytes | memoryview | None = None
    ) -> bytes | memoryview | None:
        """Takes the next chunk (``data``: its ``chunk.data`` when the caller has read it already, since the
        protobuf runtime copies the field on every access); returns the whole payload after the last chunk of
        its transfer, else None.

        Raises WireError: INVALID_ARGUMENT for a malformed or inconsistent chunk or a transfer that sends more
        than it announced, FAILED_PRECONDITION for a chunk out of order or repeated, RESOURCE_EXHAUSTED for a
        transfer above ``max_total_bytes`` or one too many open transfers, DATA_LOSS for a transfer that ends
        short of its announced length or fails its CRC-32 check.
        """
        tid, index, count = chunk.transfer_id, chunk.index, chunk.count
        transfer = self._open.get(tid)
        if transfer is None:
            transfer = self._check_first(chunk)
        elif (count, chunk.total_bytes, chunk.crc32) != (transfer.count, transfer.total, transfer.crc):
            del self._open[tid]
            raise WireError.invalid(
                f"chunk {index} of transfer {tid} is inconsistent with chunk 0: count {count} vs {transfer.count}, "
                f"total_bytes {chunk.total_bytes} vs {transfer.total}, crc32 {chunk.crc32:#010x} vs "
                f"{transfer.crc:#010x}"
            )
        elif index != transfer.received:
            del self._open[tid]
            expected = transfer.received
            what = "duplicate" if index < expected else "out-of-order"
            raise WireError.precondition(f"{what} chunk {index} of transfer {tid}: expected chunk {expected}")

        if data is None:
            data = chunk.data
        start = transfer.filled
        filled = start + len(data)
        if filled > transfer.total:
            self._open.pop(tid, None)
            raise WireError.invalid(
                f"chunk {index} of transfer {tid} brings it to {filled} bytes, more than the {transfer.total} announced"
            )
        if not data and transfer.total:
            self._open.pop(tid, None)
            raise WireError.invalid(f"chunk {index} of transfer {tid} carries no data")
        running_crc = zlib.crc32(data, transfer.running_crc)
        if transfer.buffer is not None:
            transfer.buffer[start:filled] = np.frombuffer(data, dtype=np.uint8)
        if index + 1 < count:
            transfer.received += 1
            transfer.filled = filled
            transfer.running_crc = running_crc
            if index == 0:
                self._open[tid] = transfer
            return None

        self._open.pop(tid, None)
        if filled != transfer.total:
            raise WireError.data_loss(
                f"transfer {tid} ended after {count} chunks with {filled} of the {transfer.total} bytes announced"
            )
        if running_crc != transfer.crc:
            raise WireError.data_loss(
                f"transfer {tid} fails its CRC-32 check: the payload has {running_crc:#010x}, "
                f"the chunks announce {transfer.crc:#010x}"
            )
        buffer: Any = transfer.buffer  # numpy's stubs do not declare the buffer protocol
        return memoryview(buffer) if buffer is not None else data

    def _check_first(self, chunk: tensor_pb2.Chunk | RawChunk) -> _Transfer:
        """Validates the chunk that opens a transfer; nothing is buffered or registered yet."""
        tid, index, count, total = chunk.transfer_id, chunk.index, chunk.count, chunk.total_bytes
        if count < 1:
            raise WireError.invalid(f"chunk {index} of transfer {tid} has count {count}; at least 1 is needed")
        if index >= count:
            raise WireError.invalid(f"chunk index {index} of transfer {tid} is not below its count {count}")
        if index != 0:
            raise WireError.precondition(
                f"out-of-order chunk {index} of transfer {tid}: the transfer is not open, expected chunk 0"
            )
        if total > self.max_total_bytes:
            raise WireError.exhausted(
                f"transfer {tid} announces {total} bytes, more than the {self.max_total_bytes} allowed"
            )
        if count > max(1, total):
            raise WireError.invalid(
                f"transfer {tid} announces {count} chunks for {total} bytes; every chunk must "
                "carry data unless the payload is empty"
            )
        if count > 1 and self.open_bytes + total > self.max_total_bytes:
            raise WireError.exhausted(
                f"transfer {tid} announces {total} bytes; with the {self.open_bytes} bytes of the transfers already "
                f"open that is more than the {self.max_total_bytes} bytes all open transfers may hold"
            )
        if count > 1 and len(self._open) >= self.max_open_transfers:
            raise WireError.exhausted(
                f"transfer {tid} would be chunked transfer number {len(self._open) + 1} open at "
                f"once; at most {self.max_open_transfers} are allowed"
            )
        return _Transfer(count, total, chunk.crc32)
