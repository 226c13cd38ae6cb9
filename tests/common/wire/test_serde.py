"""serde: both directions of every message, and what each ``*_from_pb`` refuses on its own."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from slperf.common.protocol.errors import WireError
from slperf.common.protocol.exchange import Exchange, SegmentLayout, Stage, TensorLayout, TensorSpec
from slperf.common.protocol.messages import (
    ErrorReport,
    Evaluate,
    Finish,
    Hello,
    ModelState,
    PhaseDone,
    Ready,
    RequestWeights,
    RunSetup,
    TrainEpoch,
    Welcome,
)
from slperf.common.protocol.types import CutReply, CutTensor, Phase, PhaseSummary, StepRef
from slperf.common.wire import serde
from slperf.common.wire.codec import BULK_MIN_BYTES
from slperf.common.wire.framing import Inbound
from slperf.v1 import session_pb2

REF = StepRef("run-1", 2, 7, Phase.TRAIN, "head")


def _client_trip(message):
    pb, bulk = serde.client_to_pb(message)
    pb = session_pb2.ClientMessage.FromString(pb.SerializeToString())
    return serde.client_from_pb(Inbound(pb, tuple(bytearray(b) for b in bulk)))


def _server_trip(message):
    pb, bulk = serde.server_to_pb(message)
    pb = session_pb2.ServerMessage.FromString(pb.SerializeToString())
    return serde.server_from_pb(Inbound(pb, tuple(bytearray(b) for b in bulk)))


EXCHANGE = Exchange(
    train=(
        Stage(up=TensorSpec((6, 12, 12)), down=TensorSpec((256,), (torch.float16, torch.bfloat16)), name="head"),
        Stage(
            up=TensorSpec((256,)),
            name="tail",
            labels=True,
            sample_ids=True,
            extra_up={"scale": TensorSpec((1,), (torch.float64,))},
            extra_down={"mask": TensorSpec((3,), (torch.bool,))},
            down_optional=True,
            down=TensorSpec((6, 12, 12)),
        ),
    ),
    eval=(Stage(up=TensorSpec((4,)), labels=True),),
    num_classes=10,
    max_batch=64,
    max_eval_batch=256,
    segments=(SegmentLayout("bottom", (TensorLayout("0.weight", (6, 1, 5, 5)), TensorLayout("n", (), torch.int64))),),
)


@pytest.mark.parametrize(
    "message",
    [
        Hello(4, "c1", "slperf 0.1.0"),
        Ready("run-1", 600, 300),
        PhaseDone(StepRef("run-1", 1, 9, Phase.EVAL), PhaseSummary(samples=300, steps=9, loss_sum=4.5, correct=250)),
        ErrorReport(grpc.StatusCode.ABORTED, "train of round 1 aborted"),
    ],
)
def test_client_messages_without_tensors_survive_the_round_trip(message):
    assert _client_trip(message) == message


@pytest.mark.parametrize(
    "message",
    [
        Welcome(4, "s1", 1 << 30, 1 << 20, 8 << 20, 1 << 28, 8, 5000.0, 10000, 60.0),
        RunSetup("run-1", '{"paradigm": "vanilla"}', 1, 3, EXCHANGE),
        TrainEpoch("run-1", 4, {"state": "B", "nested": [1, 2]}),
        Evaluate("run-1", 4),
        RequestWeights("run-1", 4, "bottom"),
        Finish("run-1", "finished"),
        ErrorReport(grpc.StatusCode.FAILED_PRECONDITION, "expected cut_tensor"),
    ],
)
def test_server_messages_without_tensors_survive_the_round_trip(message):
    assert _server_trip(message) == message


def test_cut_tensor_with_every_optional_field_and_an_attachment():
    big = torch.randn(2, BULK_MIN_BYTES // 8 + 3)  # above the attachment threshold
    labels = torch.tensor([3, 1])
    ids = torch.tensor([17, 4])
    sent = CutTensor(REF, big, labels, ids, {"second": torch.ones(2, 5)})
    pb, bulk = serde.client_to_pb(sent)
    assert len(bulk) == 1 and pb.cut_tensor.tensor.attachment == 1
    buffer = bytearray(bulk[0])
    got = serde.client_from_pb(Inbound(session_pb2.ClientMessage.FromString(pb.SerializeToString()), (buffer,)))
    assert isinstance(got, CutTensor) and got.ref == REF
    assert torch.equal(got.tensor, big) and torch.equal(got.labels, labels) and torch.equal(got.sample_ids, ids)
    assert got.extra.keys() == {"second"} and torch.equal(got.extra["second"], torch.ones(2, 5))
    # decoded once, in place: the tensor is the received buffer itself, not a copy of it
    assert got.tensor.data_ptr() == np.frombuffer(buffer, np.uint8).ctypes.data


def test_cut_reply_and_model_state_round_trip():
    reply = CutReply(REF, torch.randn(4, 6), loss=0.25, correct=3, count=4)
    got = _server_trip(reply)
    assert isinstance(got, CutReply) and got.ref == REF and torch.equal(got.tensor, reply.tensor)
    assert (got.loss, got.correct, got.count, got.extra) == (0.25, 3, 4, {})
    assert _server_trip(CutReply(REF, None)).tensor is None
    state = ModelState("run-1", 2, "bottom", {"w": torch.randn(3, 3), "b": torch.zeros(3)}, num_samples=600)
    back = _client_trip(state)
    assert (back.run_id, back.round, back.segment, back.num_samples) == ("run-1", 2, "bottom", 600)
    assert back.tensors.keys() == state.tensors.keys() and all(
        torch.equal(back.tensors[k], v) for k, v in state.tensors.items()
    )
    back.tensors["w"].add_(1)  # writable: a paradigm may keep and update a received state


def _refused(pb, expect_code, word):
    with pytest.raises(WireError) as caught:
        serde.client_from_pb(Inbound(pb))
    assert caught.value.code == expect_code and word in caught.value.message


def test_a_phase_done_without_a_ref_or_phase_is_refused_as_invalid_argument():
    _refused(
        session_pb2.ClientMessage(phase_done=session_pb2.PhaseDone(num_samples=3)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no step ref",
    )
    _refused(
        session_pb2.ClientMessage(phase_done=session_pb2.PhaseDone(ref=session_pb2.StepRef(run_id="r"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no valid phase",
    )


def test_a_cut_tensor_without_tensor_or_with_nan_is_refused():
    ref = serde.ref_to_pb(REF)
    _refused(
        session_pb2.ClientMessage(cut_tensor=session_pb2.CutTensor(ref=ref)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no tensor",
    )
    pb, _ = serde.client_to_pb(CutTensor(REF, torch.tensor([1.0, float("nan")])))
    _refused(pb, grpc.StatusCode.INVALID_ARGUMENT, "NaN")
    pb, _ = serde.client_to_pb(CutTensor(REF, torch.ones(2), extra={"x": torch.tensor([float("inf")])}))
    _refused(pb, grpc.StatusCode.INVALID_ARGUMENT, "Inf")


def test_empty_and_stray_bodies_and_bad_train_options_are_refused():
    _refused(session_pb2.ClientMessage(), grpc.StatusCode.INVALID_ARGUMENT, "empty")
    bad = session_pb2.ServerMessage(
        instruction=session_pb2.Instruction(train=session_pb2.TrainEpoch(run_id="r", options_json="{not json"))
    )
    with pytest.raises(WireError, match="not JSON"):
        serde.server_from_pb(Inbound(bad))
    listed = session_pb2.ServerMessage(
        instruction=session_pb2.Instruction(train=session_pb2.TrainEpoch(run_id="r", options_json="[1]"))
    )
    with pytest.raises(WireError, match="JSON object"):
        serde.server_from_pb(Inbound(listed))


def test_status_codes_travel_as_numbers_and_come_back_as_the_enum():
    pb, _ = serde.client_to_pb(ErrorReport(grpc.StatusCode.RESOURCE_EXHAUSTED, "x"))
    assert pb.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert serde.status_from_number(9999) is grpc.StatusCode.UNKNOWN


def test_a_run_setup_without_its_exchange_or_with_an_unknown_dtype_is_refused():
    pb = session_pb2.ServerMessage(instruction=session_pb2.Instruction(setup=session_pb2.RunSetup(run_id="r")))
    with pytest.raises(WireError, match="no exchange"):
        serde.server_from_pb(Inbound(pb, ()))
    pb.instruction.setup.exchange.train.add(name="s").up.dtypes.append(99)
    with pytest.raises(WireError, match="unknown dtype 99"):
        serde.server_from_pb(Inbound(pb, ()))
