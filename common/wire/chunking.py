"""Splitting big payloads into ~1 MiB ``Chunk`` messages and putting them back together with integrity checks.

gRPC moves a big payload several times faster as a stream of ~1 MiB messages than as one huge message, and no
single message then comes near the receive limit. Every chunk carries the transfer's chunk count, total length
and the CRC-32 of the whole payload, so the receiver can refuse a transfer on its first chunk (too big) and
check the result at the end (length and checksum).
"""
from __future__ import annotations

import zlib
from typing import Iterator

from slperf.common.wire.errors import WireError
from slperf.v1 import tensor_pb2

__all__ = ["DEFAULT_CHUNK_BYTES", "Reassembler", "iter_chunks", "split_payload"]

DEFAULT_CHUNK_BYTES = 1 << 20
_UINT32_MAX = (1 << 32) - 1
_UINT64_MAX = (1 << 64) - 1


def iter_chunks(payload: bytes | bytearray | memoryview, transfer_id: int,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tensor_pb2.Chunk]:
    """Like :func:`split_payload`, but builds each chunk only when it is asked for (for streaming)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    if not 0 <= transfer_id <= _UINT64_MAX:
        raise ValueError(f"transfer_id must fit in uint64, got {transfer_id}")
    view = memoryview(payload).cast("B") if not isinstance(payload, bytes) else None
    total = len(view) if view is not None else len(payload)
    count = max(1, -(-total // chunk_bytes))
    if count > _UINT32_MAX:
        raise ValueError(f"{total} bytes in chunks of {chunk_bytes} would need {count} chunks, more than uint32 holds")
    crc = zlib.crc32(payload)
    return _chunks(payload, view, transfer_id, chunk_bytes, count, total, crc)


def _chunks(payload, view, transfer_id, chunk_bytes, count, total, crc) -> Iterator[tensor_pb2.Chunk]:
    for i in range(count):
        start = i * chunk_bytes
        # The protobuf runtime only takes `bytes`: slicing a bytes object is the one copy per chunk (and no copy
        # at all when the whole payload fits in one chunk); other buffers go through a memoryview slice.
        data = payload[start:start + chunk_bytes] if view is None else bytes(view[start:start + chunk_bytes])
        yield tensor_pb2.Chunk(transfer_id=transfer_id, index=i, count=count, total_bytes=total, crc32=crc,
                               data=data)


def split_payload(payload: bytes | bytearray | memoryview, transfer_id: int,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[tensor_pb2.Chunk]:
    """The payload as ``ceil(len / chunk_bytes)`` chunks (at least one, even when empty), each carrying the
    CRC-32 of the whole payload."""
    return list(iter_chunks(payload, transfer_id, chunk_bytes))


class _Transfer:
    __slots__ = ("count", "total", "crc", "parts", "filled", "running_crc")

    def __init__(self, count: int, total: int, crc: int) -> None:
        self.count = count
        self.total = total
        self.crc = crc
        self.parts: list[bytes] = []  # chunk i is parts[i]; joined once at the end
        self.filled = 0
        self.running_crc = 0  # CRC-32 of the bytes received so far, updated while they are still in cache


class Reassembler:
    """Puts chunked transfers back together; one instance per stream (not thread-safe).

    ``feed`` returns the payload when the last chunk of a transfer arrived, None before. Chunks of one transfer
    must arrive in order from index 0; transfers may interleave, at most ``max_open_transfers`` at a time, each
    at most ``max_total_bytes`` long (refused on its first chunk, before anything is buffered). Any WireError
    drops the transfer it concerns, freeing what was buffered for it.

    Buffering: reading ``chunk.data`` already yields a fresh ``bytes`` object per chunk (the protobuf runtime
    copies it out), so those are kept and joined once into the exact-size result: one copy, linear. Measured on
    64 MiB in 1 MiB chunks, that is ~10 % faster than copying into a preallocated bytearray and converting it to
    ``bytes`` at the end (which touches the payload one more time).
    """

    def __init__(self, max_total_bytes: int, max_open_transfers: int = 4) -> None:
        if max_total_bytes < 0 or max_open_transfers < 1:
            raise ValueError(f"need max_total_bytes >= 0 and max_open_transfers >= 1, got {max_total_bytes} "
                             f"and {max_open_transfers}")
        self.max_total_bytes = max_total_bytes
        self.max_open_transfers = max_open_transfers
        self._open: dict[int, _Transfer] = {}

    @property
    def open_transfers(self) -> int:
        """How many transfers have started and not finished."""
        return len(self._open)

    def reset(self) -> None:
        """Drops every partially received transfer."""
        self._open.clear()

    def feed(self, chunk: tensor_pb2.Chunk) -> bytes | None:
        """Takes the next chunk; returns the whole payload after the last chunk of its transfer, else None.

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
                f"{transfer.crc:#010x}")
        elif index != len(transfer.parts):
            del self._open[tid]
            expected = len(transfer.parts)
            what = "duplicate" if index < expected else "out-of-order"
            raise WireError.precondition(f"{what} chunk {index} of transfer {tid}: expected chunk {expected}")

        data = chunk.data  # the protobuf runtime copies the field on every access: read it once
        filled = transfer.filled + len(data)
        if filled > transfer.total:
            self._open.pop(tid, None)
            raise WireError.invalid(f"chunk {index} of transfer {tid} brings it to {filled} bytes, more than the "
                                    f"{transfer.total} announced")
        if not data and transfer.total:
            self._open.pop(tid, None)
            raise WireError.invalid(f"chunk {index} of transfer {tid} carries no data")
        running_crc = zlib.crc32(data, transfer.running_crc)
        if index + 1 < count:
            transfer.parts.append(data)
            transfer.filled = filled
            transfer.running_crc = running_crc
            if index == 0:
                self._open[tid] = transfer
            return None

        self._open.pop(tid, None)
        if filled != transfer.total:
            raise WireError.data_loss(f"transfer {tid} ended after {count} chunks with {filled} of the "
                                      f"{transfer.total} bytes announced")
        if running_crc != transfer.crc:
            raise WireError.data_loss(f"transfer {tid} fails its CRC-32 check: the payload has {running_crc:#010x}, "
                                      f"the chunks announce {transfer.crc:#010x}")
        if not transfer.parts:  # a single-chunk transfer: no copy at all
            return data
        transfer.parts.append(data)
        return b"".join(transfer.parts)

    def _check_first(self, chunk: tensor_pb2.Chunk) -> _Transfer:
        """Validates the chunk that opens a transfer; nothing is buffered or registered yet."""
        tid, index, count, total = chunk.transfer_id, chunk.index, chunk.count, chunk.total_bytes
        if count < 1:
            raise WireError.invalid(f"chunk {index} of transfer {tid} has count {count}; at least 1 is needed")
        if index >= count:
            raise WireError.invalid(f"chunk index {index} of transfer {tid} is not below its count {count}")
        if index != 0:
            raise WireError.precondition(f"out-of-order chunk {index} of transfer {tid}: the transfer is not open, "
                                         "expected chunk 0")
        if total > self.max_total_bytes:
            raise WireError.exhausted(f"transfer {tid} announces {total} bytes, more than the {self.max_total_bytes} "
                                      "allowed")
        if count > max(1, total):
            raise WireError.invalid(f"transfer {tid} announces {count} chunks for {total} bytes; every chunk must "
                                    "carry data unless the payload is empty")
        if count > 1 and len(self._open) >= self.max_open_transfers:
            raise WireError.exhausted(f"transfer {tid} would be chunked transfer number {len(self._open) + 1} open at "
                                      f"once; at most {self.max_open_transfers} are allowed")
        return _Transfer(count, total, chunk.crc32)
