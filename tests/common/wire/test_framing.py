from __future__ import annotations

import grpc
import pytest

from slperf.common.wire.errors import WireError
from slperf.common.wire.framing import ByteCounter, Deframer, Framer
from slperf.v1 import session_pb2, tensor_pb2


def _pair(chunk_bytes=1024):
    up, down = ByteCounter(), ByteCounter()
    framer = Framer(session_pb2.ClientMessage, up, outgoing_is_up=True, chunk_bytes=chunk_bytes)
    deframer = Deframer(session_pb2.ClientMessage, down, incoming_is_up=True)
    return framer, deframer, up, down


def _activation(nbytes):
    return session_pb2.ClientMessage(activations=session_pb2.Activations(
        tensor=tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UINT8, shape=[nbytes], data=bytes(range(256)) * (nbytes // 256))))


def test_big_messages_are_chunked_and_reassembled_with_exact_byte_counts():
    framer, deframer, up, down = _pair()
    message = _activation(256 * 40)
    envelopes = framer.frames(message)
    assert len(envelopes) > 5 and all(e.WhichOneof("body") == "chunk" for e in envelopes)
    results = [deframer.feed(e) for e in envelopes]
    assert all(r is None for r in results[:-1])
    assert results[-1].activations.tensor.data == message.activations.tensor.data
    assert up.up == down.up == sum(e.ByteSize() for e in envelopes)


def test_replayed_or_duplicate_envelopes_are_refused():
    framer, deframer, _, _ = _pair()
    first = framer.frames(_activation(256))[0]
    second = framer.frames(_activation(256))[0]
    assert deframer.feed(first) is not None
    assert deframer.feed(second) is not None
    with pytest.raises(WireError) as info:
        deframer.feed(first)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and "duplicate" in info.value.message


def test_chunks_that_do_not_parse_are_invalid_argument():
    _, deframer, _, _ = _pair()
    bogus = session_pb2.ClientMessage(seq=1, chunk=tensor_pb2.Chunk(
        transfer_id=1, index=0, count=1, total_bytes=3, crc32=__import__("zlib").crc32(b"\xff\xff\xff"), data=b"\xff\xff\xff"))
    with pytest.raises(WireError) as info:
        deframer.feed(bogus)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
