from __future__ import annotations

import zlib

import grpc
import numpy as np
import pytest
import torch

from slperf.common.protocol.errors import WireError
from slperf.common.transport.channel import envelope_parser, serialize_envelope
from slperf.common.wire.codec import BULK_MIN_BYTES, decode_state, decode_tensor, encode_state, encode_tensor
from slperf.common.wire.framing import MAX_ATTACHMENTS, NO_BODY, ByteCounter, Deframer, Framer
from slperf.v1 import session_pb2, tensor_pb2


def _pair(chunk_bytes=1024, max_payload_bytes=1 << 30):
    up, down = ByteCounter(), ByteCounter()
    framer = Framer(session_pb2.ClientMessage, up, outgoing_is_up=True, chunk_bytes=chunk_bytes)
    deframer = Deframer(session_pb2.ClientMessage, down, incoming_is_up=True, max_payload_bytes=max_payload_bytes)
    return framer, deframer, up, down


def _wire(envelopes):
    """What the receiver gets: each envelope serialised and parsed by the session's gRPC (de)serializers."""
    return [envelope_parser(session_pb2.ClientMessage)(serialize_envelope(e)) for e in envelopes]


def _activation(nbytes):
    return session_pb2.ClientMessage(
        cut_tensor=session_pb2.CutTensor(
            tensor=tensor_pb2.Tensor(
                dtype=tensor_pb2.DTYPE_UINT8, shape=[nbytes], data=bytes(range(256)) * (nbytes // 256)
            )
        )
    )


def test_big_messages_are_chunked_and_reassembled_with_exact_byte_counts():
    framer, deframer, up, down = _pair()
    message = _activation(256 * 40)
    sent = list(framer.frames(message))
    envelopes = _wire(sent)
    assert len(envelopes) > 5 and all(e.WhichOneof("body") == "chunk" for e in envelopes)
    results = [deframer.feed(e) for e in envelopes]
    assert all(r is None for r in results[:-1])
    assert results[-1].message.cut_tensor.tensor.data == message.cut_tensor.tensor.data
    assert results[-1].bulk == ()
    assert up.up == down.up == sum(len(serialize_envelope(e)) for e in sent)


def test_big_tensors_travel_as_attachments_without_protobuf_copies():
    framer, deframer, up, down = _pair(chunk_bytes=256 * 1024)
    acts = torch.randn(3, BULK_MIN_BYTES // 4 // 3 + 7)  # just above the attachment threshold
    labels = torch.arange(3)
    bulk: list[memoryview] = []
    pb = session_pb2.CutTensor(tensor=encode_tensor(acts, bulk))
    pb.labels.CopyFrom(encode_tensor(labels, bulk))
    assert len(bulk) == 1 and pb.tensor.attachment == 1 and pb.tensor.data == b"" and pb.labels.attachment == 0
    # the attachment is a view of the tensor's own memory: nothing was copied on the sending side
    assert np.frombuffer(bulk[0], dtype=np.uint8).ctypes.data == acts.data_ptr()
    sent = list(framer.frames(session_pb2.ClientMessage(cut_tensor=pb), bulk))
    assert sent[0].WhichOneof("body") == "cut_tensor" and sent[0].attachments == 1
    assert len(sent) == 1 + -(-acts.numel() * 4 // (256 * 1024))
    results = [deframer.feed(e) for e in _wire(sent)]
    assert results[:-1] == [None] * (len(sent) - 1)
    inbound = results[-1]
    assert isinstance(inbound.bulk[0], memoryview) and not inbound.bulk[0].readonly
    got = decode_tensor(inbound.message.cut_tensor.tensor, bulk=inbound.bulk, writable=True)
    assert torch.equal(got, acts) and got.data_ptr() == np.frombuffer(inbound.bulk[0], np.uint8).ctypes.data
    assert torch.equal(decode_tensor(inbound.message.cut_tensor.labels, bulk=inbound.bulk), labels)
    assert up.up == down.up == sum(len(serialize_envelope(e)) for e in sent)
    assert up.messages_up == down.messages_up == len(sent)


def test_a_chunked_message_with_several_attachments_round_trips():
    framer, deframer, _, _ = _pair(chunk_bytes=64 * 1024)
    state = {f"small{i}": torch.full((5000,), float(i)) for i in range(30)}  # 600 KB inline: the message is chunked
    state["big1"] = torch.randn(300_000)
    state["big2"] = torch.randint(0, 9, (200_000,), dtype=torch.int64)
    bulk: list[memoryview] = []
    message = session_pb2.ClientMessage(model_state=session_pb2.ModelState(tensors=encode_state(state, bulk)))
    assert len(bulk) == 2
    inbound = [r for r in (deframer.feed(e) for e in _wire(framer.frames(message, bulk))) if r is not None]
    assert len(inbound) == 1 and len(inbound[0].bulk) == 2
    got = decode_state(inbound[0].message.model_state.tensors, expected=state, bulk=inbound[0].bulk)
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_another_message_instead_of_an_announced_attachment_is_refused_and_the_stream_recovers():
    framer, deframer, _, _ = _pair(chunk_bytes=64 * 1024)
    bulk: list[memoryview] = []
    pb = session_pb2.CutTensor(tensor=encode_tensor(torch.zeros(BULK_MIN_BYTES // 4), bulk))
    envelopes = _wire(framer.frames(session_pb2.ClientMessage(cut_tensor=pb), bulk))
    assert deframer.feed(envelopes[0]) is None and deframer.feed(envelopes[1]) is None
    intruder = _wire(framer.frames(session_pb2.ClientMessage(ready=session_pb2.Ready(run_id="r"))))[0]
    with pytest.raises(WireError) as info:
        deframer.feed(intruder)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "expected attachment 1 of 1" in info.value.message
    after = _wire(framer.frames(session_pb2.ClientMessage(ready=session_pb2.Ready(run_id="next"))))[0]
    assert deframer.feed(after).message.ready.run_id == "next"


def test_attachment_count_and_total_size_are_bounded():
    _, deframer, _, _ = _pair()
    with pytest.raises(WireError) as info:
        deframer.feed(
            session_pb2.ClientMessage(seq=1, attachments=MAX_ATTACHMENTS + 1, ready=session_pb2.Ready(run_id="r"))
        )
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "attachments" in info.value.message

    _, deframer, _, _ = _pair(max_payload_bytes=10_000)
    assert deframer.feed(session_pb2.ClientMessage(seq=1, attachments=2, ready=session_pb2.Ready())) is None
    data = b"x" * 6000
    chunk = tensor_pb2.Chunk(transfer_id=1, index=0, count=1, total_bytes=6000, crc32=zlib.crc32(data), data=data)
    assert deframer.feed(session_pb2.ClientMessage(seq=2, chunk=chunk)) is None
    chunk.transfer_id = 2
    with pytest.raises(WireError) as info:
        deframer.feed(session_pb2.ClientMessage(seq=3, chunk=chunk))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "in total" in info.value.message


def test_a_tensor_naming_a_missing_attachment_or_both_kinds_of_data_is_invalid():
    with pytest.raises(WireError, match="names attachment 2, but the message has 1"):
        decode_tensor(tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UINT8, shape=[3], attachment=2), bulk=(b"abc",))
    with pytest.raises(WireError, match="both inline data and attachment 1"):
        decode_tensor(
            tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UINT8, shape=[3], data=b"abc", attachment=1), bulk=(b"abc",)
        )
    with pytest.raises(WireError, match="data has 2 bytes"):
        decode_tensor(tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UINT8, shape=[3], attachment=1), bulk=(b"ab",))


def test_replayed_or_duplicate_envelopes_are_refused():
    framer, deframer, _, _ = _pair()
    (first,) = framer.frames(_activation(256))
    (second,) = framer.frames(_activation(256))
    assert deframer.feed(first) is not None
    assert deframer.feed(second) is not None
    with pytest.raises(WireError) as info:
        deframer.feed(first)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and "duplicate" in info.value.message


def test_chunks_that_do_not_parse_are_invalid_argument():
    _, deframer, _, _ = _pair()
    bogus = session_pb2.ClientMessage(
        seq=1,
        chunk=tensor_pb2.Chunk(
            transfer_id=1, index=0, count=1, total_bytes=3, crc32=zlib.crc32(b"\xff\xff\xff"), data=b"\xff\xff\xff"
        ),
    )
    with pytest.raises(WireError) as info:
        deframer.feed(bogus)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_interleaved_attachment_transfers_share_the_payload_budget():
    """Attachments whose transfers are opened side by side count together: the announced total of all of them
    and the attachments already received stay within one ``max_payload_bytes``."""
    _, deframer, _, _ = _pair(max_payload_bytes=10_000)
    assert deframer.feed(session_pb2.ClientMessage(seq=1, attachments=3, ready=session_pb2.Ready())) is None
    assert deframer.unfinished_since is not None
    data = b"x" * 1000
    first = tensor_pb2.Chunk(transfer_id=1, index=0, count=6, total_bytes=6000, crc32=0, data=data)
    assert deframer.feed(session_pb2.ClientMessage(seq=2, chunk=first)) is None
    assert deframer.buffered_bytes == 6000
    second = tensor_pb2.Chunk(transfer_id=2, index=0, count=6, total_bytes=6000, crc32=0, data=data)
    with pytest.raises(WireError) as info:
        deframer.feed(session_pb2.ClientMessage(seq=3, chunk=second))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert deframer.buffered_bytes == 0 and deframer.unfinished_since is None  # the message was dropped whole


def test_an_envelope_without_a_body_is_counted_under_a_name_that_sorts():
    """A fuzzing peer's body-less envelope once reached the counts as None, and sorting them for the run's summary
    failed the run for every client (tests/faults/test_fuzz_in_run.py)."""
    framer, deframer, up, down = _pair()
    for envelope in _wire(framer.frames(_activation(256), [])) + [session_pb2.ClientMessage(seq=99)]:
        try:
            deframer.feed(envelope)
        except WireError:
            pass  # the junk is refused; what matters is how it was counted
    assert down.kinds_up == {"cut_tensor": 1, NO_BODY: 1}
