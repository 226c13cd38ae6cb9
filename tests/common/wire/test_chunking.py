"""Chunked transfers: exact reassembly for any payload/chunk size, and precise refusals of bad chunk streams."""

from __future__ import annotations

import random
import zlib

import grpc
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from slperf.common.protocol.errors import WireError
from slperf.common.wire.chunking import (
    DEFAULT_CHUNK_BYTES,
    ChunkEnvelope,
    RawChunk,
    Reassembler,
    iter_chunks,
    parse_chunk_envelope,
    split_payload,
)
from slperf.common.wire.codec import decode_tensor, encode_tensor
from slperf.v1 import session_pb2, tensor_pb2

MiB = 1 << 20
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DATA_LOSS = grpc.StatusCode.DATA_LOSS


def _payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _wire(chunk: tensor_pb2.Chunk) -> tensor_pb2.Chunk:
    """The chunk as the receiver parses it."""
    return tensor_pb2.Chunk.FromString(chunk.SerializeToString())


def _any_chunk_envelope(test):
    """Every field of a chunk envelope over its whole range, for both envelope types."""
    return settings(max_examples=200, deadline=None)(
        given(
            seq=st.integers(0, 2**64 - 1),
            transfer_id=st.integers(0, 2**64 - 1),
            index=st.integers(0, 2**32 - 1),
            count=st.integers(0, 2**32 - 1),
            total=st.integers(0, 2**64 - 1),
            crc=st.integers(0, 2**32 - 1),
            data=st.binary(max_size=300),
            server=st.booleans(),
        )(test)
    )


def _feed_all(reassembler: Reassembler, chunks) -> list:
    return [reassembler.feed(_wire(c)) for c in chunks]


def _refused(reassembler: Reassembler, chunk: tensor_pb2.Chunk, code, *fragments) -> WireError:
    with pytest.raises(WireError) as info:
        reassembler.feed(chunk)
    assert info.value.code == code, info.value
    for fragment in fragments:
        assert fragment in info.value.message, (fragment, info.value.message)
    return info.value


# ---------------------------------------------------------------- round trips


@st.composite
def sizes(draw):
    size = draw(
        st.one_of(
            st.integers(0, 4096),
            st.integers(MiB // 2, 3 * MiB),
            st.sampled_from([0, 1, MiB - 1, MiB, MiB + 1, 2 * MiB]),
        )
    )
    low = max(1, size // 300)  # at most ~300 chunks per example keeps the property fast
    chunk = draw(
        st.one_of(st.integers(low, max(low, size // 2)), st.integers(low, 2 * size + 1), st.just(DEFAULT_CHUNK_BYTES))
    )
    return size, chunk


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=sizes(), seed=st.integers(0, 2**32 - 1), transfer_id=st.integers(0, 2**64 - 1))
def test_any_payload_round_trips(sc, seed, transfer_id):
    size, chunk_bytes = sc
    payload = _payload(size, seed)
    chunks = split_payload(payload, transfer_id, chunk_bytes)
    assert len(chunks) == max(1, -(-size // chunk_bytes))
    event("payload > 1 MiB" if size > MiB else "payload > 4 KiB" if size > 4096 else "payload <= 4 KiB")
    event("one chunk" if len(chunks) == 1 else "several chunks")
    crc = zlib.crc32(payload)
    for i, c in enumerate(chunks):
        assert (c.transfer_id, c.index, c.count, c.total_bytes, c.crc32) == (transfer_id, i, len(chunks), size, crc)
        assert 0 < len(c.data) <= chunk_bytes or size == 0
    reassembler = Reassembler(max_total_bytes=size)
    results = _feed_all(reassembler, chunks)
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert isinstance(results[-1], bytes if len(chunks) == 1 else memoryview) and results[-1] == payload
    assert reassembler.open_transfers == 0


def test_empty_payload_is_one_chunk():
    (chunk,) = split_payload(b"", 5)
    assert (chunk.index, chunk.count, chunk.total_bytes, chunk.crc32, chunk.data) == (0, 1, 0, 0, b"")
    assert Reassembler(0).feed(_wire(chunk)) == b""


def test_buffers_other_than_bytes_split_alike():
    payload = _payload(10_000, 3)
    expected = [c.SerializeToString() for c in split_payload(payload, 9, 999)]
    for other in (bytearray(payload), memoryview(payload), memoryview(bytearray(payload))):
        assert [c.SerializeToString() for c in split_payload(other, 9, 999)] == expected
    assert [c.to_pb().SerializeToString() for c in iter_chunks(payload, 9, 999)] == expected


@_any_chunk_envelope
def test_hand_serialised_chunk_envelopes_are_what_protobuf_writes(
    seq, transfer_id, index, count, total, crc, data, server
):
    envelope_type = session_pb2.ServerMessage if server else session_pb2.ClientMessage
    raw = ChunkEnvelope(envelope_type, seq, RawChunk(transfer_id, index, count, total, crc, memoryview(data)))
    expected = envelope_type(
        seq=seq,
        chunk=tensor_pb2.Chunk(
            transfer_id=transfer_id, index=index, count=count, total_bytes=total, crc32=crc, data=data
        ),
    )
    wire = raw.SerializeToString()
    assert wire == expected.SerializeToString()
    assert raw.ByteSize() == expected.ByteSize() == len(wire)
    assert envelope_type.FromString(wire) == expected


def test_split_refuses_bad_arguments():
    with pytest.raises(ValueError):
        split_payload(b"abc", 1, 0)
    with pytest.raises(ValueError):
        split_payload(b"abc", -1)
    with pytest.raises(ValueError):
        split_payload(b"abc", 2**64)


def test_interleaved_transfers_reassemble_independently():
    a, b = _payload(5000, 1), _payload(3000, 2)
    ca, cb = split_payload(a, 1, 1000), split_payload(b, 2, 1000)
    r = Reassembler(10_000, max_open_transfers=2)
    out = {}
    for pair in zip(ca, cb + [None] * (len(ca) - len(cb))):
        for c in pair:
            if c is not None:
                got = r.feed(_wire(c))
                if got is not None:
                    out[c.transfer_id] = got
    assert out == {1: a, 2: b} and r.open_transfers == 0


def test_a_tensor_survives_serialise_chunk_reassemble_decode():
    t = torch.randn(128, 6, 12, 12)
    payload = encode_tensor(t).SerializeToString()
    r = Reassembler(len(payload))
    msg = tensor_pb2.Tensor.FromString(_feed_all(r, split_payload(payload, 42, 64 * 1024))[-1])
    assert torch.equal(decode_tensor(msg), t)


# ---------------------------------------------------------------- refusals


def _chunks(size=5000, chunk_bytes=1000, transfer_id=7, seed=0):
    return [_wire(c) for c in split_payload(_payload(size, seed), transfer_id, chunk_bytes)]


def test_out_of_order_chunk_is_refused_and_the_transfer_dropped():
    c = _chunks()
    r = Reassembler(MiB)
    r.feed(c[0])
    _refused(r, c[2], PRECONDITION, "out-of-order chunk 2 of transfer 7", "expected chunk 1")
    assert r.open_transfers == 0
    _refused(r, c[1], PRECONDITION, "chunk 1 of transfer 7", "expected chunk 0")
    assert _feed_all(r, c)[-1] == _payload(5000)  # a clean restart of the same id works


def test_transfer_that_does_not_start_at_zero_is_refused():
    _refused(Reassembler(MiB), _chunks()[3], PRECONDITION, "out-of-order chunk 3 of transfer 7", "expected chunk 0")


def test_duplicate_chunk_is_refused():
    c = _chunks()
    r = Reassembler(MiB)
    r.feed(c[0])
    r.feed(c[1])
    _refused(r, c[1], PRECONDITION, "duplicate chunk 1 of transfer 7", "expected chunk 2")
    assert r.open_transfers == 0


@pytest.mark.parametrize("where", [0, 2, 4])
def test_flipped_byte_fails_the_crc(where):
    c = _chunks()
    data = bytearray(c[where].data)
    data[len(data) // 2] ^= 0x01
    c[where].data = bytes(data)
    r = Reassembler(MiB)
    for chunk in c[:-1]:
        assert r.feed(chunk) is None
    _refused(r, c[-1], DATA_LOSS, "transfer 7 fails its CRC-32 check", f"{zlib.crc32(_payload(5000)):#010x}")
    assert r.open_transfers == 0


def test_flipped_byte_in_single_chunk_fails_the_crc():
    (c,) = _chunks(size=100, chunk_bytes=1000)
    c.data = b"\xff" + c.data[1:]
    _refused(Reassembler(MiB), c, DATA_LOSS, "CRC-32")


def test_total_over_limit_is_refused_on_the_first_chunk_before_buffering():
    c = _chunks(size=5000)
    r = Reassembler(max_total_bytes=4999)
    _refused(r, c[0], EXHAUSTED, "transfer 7 announces 5000 bytes", "more than the 4999 allowed")
    assert r.open_transfers == 0
    # a forged header claiming an enormous payload is refused the same way, nothing allocated
    forged = tensor_pb2.Chunk(transfer_id=1, index=0, count=2, total_bytes=2**63, crc32=0, data=b"x")
    _refused(r, forged, EXHAUSTED, "announces 9223372036854775808 bytes")


def test_inconsistent_count_total_or_crc_is_refused():
    for field, value, fragment in (
        ("count", 9, "count 9 vs 5"),
        ("total_bytes", 6000, "total_bytes 6000 vs 5000"),
        ("crc32", 1234, "crc32 0x000004d2"),
    ):
        c = _chunks()
        r = Reassembler(MiB)
        r.feed(c[0])
        setattr(c[1], field, value)
        _refused(r, c[1], INVALID, "chunk 1 of transfer 7 is inconsistent with chunk 0", fragment)
        assert r.open_transfers == 0


def test_malformed_first_chunks_are_refused():
    r = Reassembler(MiB)
    _refused(
        r,
        tensor_pb2.Chunk(transfer_id=3, index=0, count=0, total_bytes=1, data=b"x"),
        INVALID,
        "count 0; at least 1 is needed",
    )
    _refused(
        r,
        tensor_pb2.Chunk(transfer_id=3, index=2, count=2, total_bytes=1, data=b"x"),
        INVALID,
        "chunk index 2 of transfer 3 is not below its count 2",
    )
    _refused(
        r, tensor_pb2.Chunk(transfer_id=3, index=0, count=5, total_bytes=3, data=b"x"), INVALID, "5 chunks for 3 bytes"
    )
    _refused(
        r,
        tensor_pb2.Chunk(transfer_id=3, index=0, count=2, total_bytes=3, data=b""),
        INVALID,
        "chunk 0 of transfer 3 carries no data",
    )
    assert r.open_transfers == 0


def test_too_many_open_transfers_are_refused():
    r = Reassembler(MiB, max_open_transfers=2)
    r.feed(_chunks(transfer_id=1)[0])
    r.feed(_chunks(transfer_id=2)[0])
    _refused(
        r,
        _chunks(transfer_id=3)[0],
        EXHAUSTED,
        "transfer 3 would be chunked transfer number 3",
        "at most 2 are allowed",
    )
    # a payload small enough for one chunk never stays open, so it still goes through
    assert r.feed(_chunks(size=10, transfer_id=4)[0]) == _payload(10)
    r.reset()
    assert r.open_transfers == 0
    assert _feed_all(r, split_payload(_payload(5000), 3, 1000))[-1] == _payload(5000)


def test_truncated_transfer_is_data_loss():
    c = _chunks(size=5000, chunk_bytes=1000)
    c[-1].data = c[-1].data[:-1]
    r = Reassembler(MiB)
    for chunk in c[:-1]:
        r.feed(chunk)
    _refused(r, c[-1], DATA_LOSS, "transfer 7 ended after 5 chunks with 4999 of the 5000 bytes announced")
    (single,) = _chunks(size=10, chunk_bytes=100)
    single.data = single.data[:4]
    _refused(Reassembler(MiB), single, DATA_LOSS, "with 4 of the 10 bytes")


def test_more_bytes_than_announced_are_refused():
    c = _chunks(size=5000, chunk_bytes=1000)
    c[2].data = c[2].data + c[3].data + c[4].data + b"!"
    r = Reassembler(MiB)
    r.feed(c[0])
    r.feed(c[1])
    _refused(r, c[2], INVALID, "chunk 2 of transfer 7 brings it to 5001 bytes, more than the 5000 announced")
    assert r.open_transfers == 0


def test_reset_drops_partial_transfers():
    c = _chunks()
    r = Reassembler(MiB)
    r.feed(c[0])
    r.feed(c[1])
    r.reset()
    assert r.open_transfers == 0
    _refused(r, c[2], PRECONDITION, "expected chunk 0")


def test_reassembler_refuses_bad_limits():
    with pytest.raises(ValueError):
        Reassembler(-1)
    with pytest.raises(ValueError):
        Reassembler(10, max_open_transfers=0)


def _fields(envelope) -> tuple:
    c = envelope.chunk
    return envelope.seq, c.transfer_id, c.index, c.count, c.total_bytes, c.crc32, bytes(c.data), envelope.ByteSize()


@_any_chunk_envelope
def test_chunk_envelopes_parsed_by_hand_equal_protobuf_parsing(
    seq, transfer_id, index, count, total, crc, data, server
):
    envelope_type = session_pb2.ServerMessage if server else session_pb2.ClientMessage
    wire = envelope_type(
        seq=seq,
        chunk=tensor_pb2.Chunk(
            transfer_id=transfer_id, index=index, count=count, total_bytes=total, crc32=crc, data=data
        ),
    ).SerializeToString()
    fast = parse_chunk_envelope(wire, envelope_type)
    assert fast is not None and isinstance(fast.chunk.data, memoryview)
    assert _fields(fast) == _fields(envelope_type.FromString(wire)) and fast.ByteSize() == len(wire)


@settings(max_examples=500, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda head, tail: (
                session_pb2.ClientMessage(seq=3, chunk=tensor_pb2.Chunk(index=1, data=b"xyz")).SerializeToString()[
                    :head
                ]
                + tail
            ),
            st.integers(0, 20),
            st.binary(max_size=8),
        ),
    )
)
def test_anything_the_hand_parser_accepts_protobuf_reads_the_same(data):
    """Arbitrary and mangled bytes: the fast path either declines (protobuf decides) or agrees with protobuf."""
    fast = parse_chunk_envelope(data, session_pb2.ClientMessage)
    if fast is None:
        return
    slow = session_pb2.ClientMessage.FromString(data)
    assert slow.WhichOneof("body") == "chunk" and _fields(fast) == _fields(slow)


def test_envelopes_with_other_bodies_or_extra_fields_are_left_to_protobuf():
    other = session_pb2.ClientMessage(seq=1, ready=session_pb2.Ready(run_id="r")).SerializeToString()
    assert parse_chunk_envelope(other, session_pb2.ClientMessage) is None
    with_attachments = session_pb2.ClientMessage(
        seq=1, attachments=2, chunk=tensor_pb2.Chunk(count=1)
    ).SerializeToString()
    assert parse_chunk_envelope(with_attachments, session_pb2.ClientMessage) is None
    repeated_seq = (
        session_pb2.ClientMessage(seq=1).SerializeToString()
        + session_pb2.ClientMessage(seq=2, chunk=tensor_pb2.Chunk(count=1)).SerializeToString()
    )
    assert parse_chunk_envelope(repeated_seq, session_pb2.ClientMessage) is None  # protobuf: the last seq wins


def test_open_transfers_share_one_byte_budget():
    """Four interleaved transfers may be open, but together they buffer at most ``max_total_bytes`` (they were
    each allowed that much: 4 x the payload limit held forever by one stalled sender)."""
    r = Reassembler(10_000, max_open_transfers=4)
    firsts = [split_payload(_payload(6000, tid), tid, 1000)[0] for tid in (1, 2)]
    assert r.feed(_wire(firsts[0])) is None
    assert r.open_bytes == 6000
    _refused(r, firsts[1], EXHAUSTED, "transfer 2 announces 6000 bytes", "10000 bytes all open transfers may hold")
    assert r.open_transfers == 1 and r.open_bytes == 6000
    small = split_payload(_payload(4000, 3), 3, 1000)
    for chunk in small[:-1]:
        assert r.feed(_wire(chunk)) is None
    assert r.open_bytes == 10_000
    assert r.feed(_wire(small[-1])) == _payload(4000, 3)
    assert r.open_bytes == 6000 and r.opened_at is not None
    r.reset()
    assert r.open_bytes == 0 and r.opened_at is None
