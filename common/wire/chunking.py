"""Splitting big payloads into ~1 MiB chunks and putting them back together with integrity checks."""
from __future__ import annotations

import zlib

import grpc

from slperf.common.wire.errors import WireError
from slperf.v1 import tensor_pb2

DEFAULT_CHUNK_BYTES = 1 << 20


def split_payload(payload: bytes, transfer_id: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[tensor_pb2.Chunk]:
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    total = len(payload)
    crc = zlib.crc32(payload)
    count = max(1, -(-total // chunk_bytes))
    view = memoryview(payload)
    return [tensor_pb2.Chunk(transfer_id=transfer_id, index=i, count=count, total_bytes=total, crc32=crc,
                             data=bytes(view[i * chunk_bytes:(i + 1) * chunk_bytes])) for i in range(count)]


class _Transfer:
    __slots__ = ("count", "total", "crc", "buffer", "filled", "next_index")

    def __init__(self, chunk: tensor_pb2.Chunk):
        self.count, self.total, self.crc = chunk.count, chunk.total_bytes, chunk.crc32
        self.buffer = bytearray(chunk.total_bytes)
        self.filled = 0
        self.next_index = 0


class Reassembler:
    def __init__(self, max_total_bytes: int, max_open_transfers: int = 4):
        self.max_total_bytes = max_total_bytes
        self.max_open_transfers = max_open_transfers
        self._open: dict[int, _Transfer] = {}

    def reset(self) -> None:
        self._open.clear()

    def feed(self, chunk: tensor_pb2.Chunk) -> bytes | None:
        tid = chunk.transfer_id
        transfer = self._open.get(tid)
        if transfer is None:
            if chunk.count < 1:
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"chunk of transfer {tid}: count must be >= 1")
            if chunk.index != 0:
                raise WireError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"transfer {tid} starts at chunk {chunk.index}, not 0 (out of order or duplicate)")
            if chunk.total_bytes > self.max_total_bytes:
                raise WireError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"transfer {tid} announces {chunk.total_bytes} bytes; the limit is {self.max_total_bytes}")
            if len(self._open) >= self.max_open_transfers:
                raise WireError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{len(self._open)} chunked transfers already open; the limit is {self.max_open_transfers}")
            transfer = _Transfer(chunk)
            self._open[tid] = transfer
        elif (chunk.count, chunk.total_bytes, chunk.crc32) != (transfer.count, transfer.total, transfer.crc):
            del self._open[tid]
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"chunk {chunk.index} of transfer {tid} disagrees with "
                                                              "the first chunk on count, size or checksum")
        elif chunk.index != transfer.next_index:
            raise WireError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"chunk {chunk.index} of transfer {tid} arrived where {transfer.next_index} was expected")
        if chunk.index >= transfer.count:
            del self._open[tid]
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"chunk index {chunk.index} >= count {transfer.count}")
        n = len(chunk.data)
        if transfer.filled + n > transfer.total:
            del self._open[tid]
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"transfer {tid} sends more than the {transfer.total} "
                                                              "bytes it announced")
        transfer.buffer[transfer.filled:transfer.filled + n] = chunk.data
        transfer.filled += n
        transfer.next_index += 1
        if transfer.next_index < transfer.count:
            return None
        del self._open[tid]
        if transfer.filled != transfer.total:
            raise WireError(grpc.StatusCode.DATA_LOSS, f"transfer {tid} ended with {transfer.filled} of "
                                                       f"{transfer.total} bytes")
        payload = bytes(transfer.buffer)
        if zlib.crc32(payload) != transfer.crc:
            raise WireError(grpc.StatusCode.DATA_LOSS, f"transfer {tid} failed its CRC-32 check")
        return payload
