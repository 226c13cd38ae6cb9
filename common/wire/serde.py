"""Both directions of every session message, side by side: the protobuf schema <-> ``slperf.common.protocol``.

This is the only module that builds or reads a session protobuf message. Each ``*_from_pb`` validates what the
message can get wrong on its own (a missing field, an unset phase, a bad tensor, malformed JSON) and raises
``WireError`` with the status code the receiver answers with; every tensor is decoded here, once, and the
decoded tensor is what the rest of the receiver works with. What depends on the run (the expected step, the
shapes a paradigm declared) is checked above, by whoever expects the message.

Tensors of 1 MiB and more travel as attachments: ``*_to_pb`` functions append their raw bytes to ``bulk``
(sent after the message by the framer) and ``*_from_pb`` functions read them back from the received ``bulk``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import grpc
import torch

from slperf.common.protocol.compression import NO_CODEC, Codec, Encoding
from slperf.common.protocol.errors import WireError
from slperf.common.protocol.exchange import Exchange, SegmentLayout, Stage, TensorLayout, TensorSpec
from slperf.common.protocol.messages import (
    ClientMessage,
    ErrorReport,
    Evaluate,
    Finish,
    Hello,
    ModelState,
    PhaseDone,
    Ready,
    RequestWeights,
    RunSetup,
    ServerMessage,
    TrainEpoch,
    Welcome,
)
from slperf.common.protocol.types import CutReply, CutTensor, Phase, PhaseSummary, StepRef
from slperf.common.wire.codec import (
    DEFAULT_LIMITS,
    TORCH_TO_WIRE,
    WIRE_TO_TORCH,
    TensorLimits,
    decode_state,
    decode_tensor,
    dtype_name,
    encode_state,
    encode_tensor,
)
from slperf.common.wire.compressed import decode_cut, encode_cut
from slperf.common.wire.framing import Inbound
from slperf.v1 import session_pb2, tensor_pb2

# 2: attachments (raw tensor bytes after the message); 3: generic CutTensor/CutReply instead of
# Activations/Gradients, which named one paradigm's use of them; 4: Welcome carries every limit, RunSetup the
# declared exchange, and the fields no server acted on (resume_token, capabilities) are gone; 5: compressed cut
# tensors (Tensor.encoding, scales, zero_points, indices; TensorSpec.codec), the unused scale/zero_point are gone.
PROTOCOL_VERSION = 5

Bulk = Sequence[bytes | memoryview]
_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_from_number(number: int) -> grpc.StatusCode:
    """A google.rpc.Code number as the grpc enum (an unknown number is UNKNOWN)."""
    return _STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


# -- StepRef ---------------------------------------------------------------------------------------------------
def ref_to_pb(ref: StepRef) -> session_pb2.StepRef:
    return session_pb2.StepRef(
        run_id=ref.run_id,
        round=ref.round,
        step=ref.step,
        phase=cast(session_pb2.Phase, int(ref.phase)),
        stage=ref.stage,
    )


def ref_from_pb(pb: session_pb2.StepRef) -> StepRef:
    phase = int(pb.phase)
    if phase not in (Phase.TRAIN, Phase.EVAL):
        raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"step ref has no valid phase (got {phase})")
    return StepRef(pb.run_id, pb.round, pb.step, Phase(phase), pb.stage)


def _required_ref(message: Any, what: str) -> StepRef:
    if not message.HasField("ref"):
        raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} has no step ref")
    return ref_from_pb(message.ref)


# -- Hello / Welcome -------------------------------------------------------------------------------------------
def hello_to_pb(m: Hello) -> session_pb2.Hello:
    return session_pb2.Hello(
        protocol_version=m.protocol_version, client_id=m.client_id, software_version=m.software_version
    )


def hello_from_pb(pb: session_pb2.Hello) -> Hello:
    return Hello(pb.protocol_version, pb.client_id, pb.software_version)


def welcome_to_pb(m: Welcome) -> session_pb2.Welcome:
    return session_pb2.Welcome(
        protocol_version=m.protocol_version,
        session_id=m.session_id,
        max_payload_bytes=m.max_payload_bytes,
        chunk_bytes=m.chunk_bytes,
        max_envelope_bytes=m.max_envelope_bytes,
        max_tensor_elements=m.max_tensor_elements,
        max_tensor_dims=m.max_tensor_dims,
        messages_per_second=m.messages_per_second,
        message_burst=m.message_burst,
        write_timeout_seconds=m.write_timeout_seconds,
    )


def welcome_from_pb(pb: session_pb2.Welcome) -> Welcome:
    return Welcome(
        pb.protocol_version,
        pb.session_id,
        max_payload_bytes=pb.max_payload_bytes,
        chunk_bytes=pb.chunk_bytes,
        max_envelope_bytes=pb.max_envelope_bytes,
        max_tensor_elements=pb.max_tensor_elements,
        max_tensor_dims=pb.max_tensor_dims,
        messages_per_second=pb.messages_per_second,
        message_burst=pb.message_burst,
        write_timeout_seconds=pb.write_timeout_seconds,
    )


def _wire_dtype(dtype: torch.dtype) -> tensor_pb2.DType:
    return cast(tensor_pb2.DType, TORCH_TO_WIRE[dtype])


# -- Exchange (inside RunSetup) ----------------------------------------------------------------------------------
def _dtype_from_pb(code: int, what: str) -> torch.dtype:
    dtype = WIRE_TO_TORCH.get(code)
    if dtype is None:
        raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} has {dtype_name(code)}")
    return dtype


def codec_to_pb(m: Codec) -> session_pb2.TensorCodec:
    return session_pb2.TensorCodec(
        encoding=cast(tensor_pb2.TensorEncoding, int(m.encoding)),
        per_channel=m.per_channel,
        topk_fraction=m.fraction,
        error_feedback=m.error_feedback,
    )


def codec_from_pb(pb: session_pb2.TensorCodec, what: str) -> Codec:
    try:
        return Codec(Encoding(pb.encoding), pb.per_channel, pb.topk_fraction, pb.error_feedback)
    except ValueError as exc:  # an unknown encoding number, or fields that do not belong to the encoding
        raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} has an invalid codec: {exc}") from None


def tensor_spec_to_pb(m: TensorSpec) -> session_pb2.TensorSpec:
    pb = session_pb2.TensorSpec(sample_shape=list(m.sample_shape), dtypes=[_wire_dtype(d) for d in m.dtypes])
    if m.codec.compressed:
        pb.codec.CopyFrom(codec_to_pb(m.codec))
    return pb


def tensor_spec_from_pb(pb: session_pb2.TensorSpec, what: str) -> TensorSpec:
    if not pb.dtypes:
        raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} names no dtype")
    codec = codec_from_pb(pb.codec, what) if pb.HasField("codec") else NO_CODEC
    return TensorSpec(tuple(pb.sample_shape), tuple(_dtype_from_pb(d, what) for d in pb.dtypes), codec)


def stage_to_pb(m: Stage) -> session_pb2.ExchangeStage:
    pb = session_pb2.ExchangeStage(
        name=m.name, up=tensor_spec_to_pb(m.up), labels=m.labels, sample_ids=m.sample_ids, down_optional=m.down_optional
    )
    if m.down is not None:
        pb.down.CopyFrom(tensor_spec_to_pb(m.down))
    for name, spec in m.extra_up.items():
        pb.extra_up[name].CopyFrom(tensor_spec_to_pb(spec))
    for name, spec in m.extra_down.items():
        pb.extra_down[name].CopyFrom(tensor_spec_to_pb(spec))
    return pb


def stage_from_pb(pb: session_pb2.ExchangeStage) -> Stage:
    what = f"exchange stage {pb.name!r}"
    if not pb.HasField("up"):
        raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} has no up spec")
    return Stage(
        up=tensor_spec_from_pb(pb.up, what),
        down=tensor_spec_from_pb(pb.down, what) if pb.HasField("down") else None,
        name=pb.name,
        labels=pb.labels,
        sample_ids=pb.sample_ids,
        extra_up={k: tensor_spec_from_pb(pb.extra_up[k], what) for k in sorted(pb.extra_up)},
        extra_down={k: tensor_spec_from_pb(pb.extra_down[k], what) for k in sorted(pb.extra_down)},
        down_optional=pb.down_optional,
    )


def exchange_to_pb(m: Exchange) -> session_pb2.Exchange:
    return session_pb2.Exchange(
        train=[stage_to_pb(s) for s in m.train],
        eval=[stage_to_pb(s) for s in m.eval],
        num_classes=m.num_classes,
        max_batch=m.max_batch,
        max_eval_batch=m.max_eval_batch,
        segments=[segment_layout_to_pb(seg) for seg in m.segments],
    )


def segment_layout_to_pb(seg: SegmentLayout) -> session_pb2.SegmentLayout:
    return session_pb2.SegmentLayout(
        name=seg.name,
        tensors=[session_pb2.TensorLayout(name=t.name, dtype=_wire_dtype(t.dtype), shape=t.shape) for t in seg.tensors],
    )


def segment_layout_from_pb(seg: session_pb2.SegmentLayout) -> SegmentLayout:
    """The layout, with every dtype checked (WireError naming the tensor for one that is not a wire dtype)."""
    return SegmentLayout(
        seg.name,
        tuple(
            TensorLayout(t.name, tuple(t.shape), _dtype_from_pb(t.dtype, f"segment {seg.name!r} tensor {t.name!r}"))
            for t in seg.tensors
        ),
    )


def exchange_from_pb(pb: session_pb2.Exchange) -> Exchange:
    segments = tuple(segment_layout_from_pb(seg) for seg in pb.segments)
    return Exchange(
        train=tuple(stage_from_pb(s) for s in pb.train),
        eval=tuple(stage_from_pb(s) for s in pb.eval),
        num_classes=pb.num_classes,
        max_batch=pb.max_batch,
        max_eval_batch=pb.max_eval_batch,
        segments=segments,
    )


# -- Instructions ----------------------------------------------------------------------------------------------
def instruction_to_pb(m: RunSetup | TrainEpoch | Evaluate | RequestWeights | Finish) -> session_pb2.Instruction:
    if isinstance(m, RunSetup):
        return session_pb2.Instruction(
            setup=session_pb2.RunSetup(
                run_id=m.run_id,
                config_json=m.config_json,
                client_index=m.client_index,
                num_clients=m.num_clients,
                exchange=exchange_to_pb(m.exchange),
            )
        )
    if isinstance(m, TrainEpoch):
        return session_pb2.Instruction(
            train=session_pb2.TrainEpoch(run_id=m.run_id, round=m.round, options_json=json.dumps(dict(m.options)))
        )
    if isinstance(m, Evaluate):
        return session_pb2.Instruction(evaluate=session_pb2.Evaluate(run_id=m.run_id, round=m.round))
    if isinstance(m, RequestWeights):
        return session_pb2.Instruction(
            request_weights=session_pb2.RequestWeights(run_id=m.run_id, round=m.round, segment=m.segment)
        )
    return session_pb2.Instruction(finish=session_pb2.Finish(run_id=m.run_id, reason=m.reason))


def instruction_from_pb(pb: session_pb2.Instruction) -> RunSetup | TrainEpoch | Evaluate | RequestWeights | Finish:
    kind = pb.WhichOneof("kind")
    if kind == "setup":
        s = pb.setup
        if not s.HasField("exchange"):
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "run setup carries no exchange")
        return RunSetup(s.run_id, s.config_json, s.client_index, s.num_clients, exchange_from_pb(s.exchange))
    if kind == "train":
        try:
            options = json.loads(pb.train.options_json or "{}")
        except ValueError as exc:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"train options are not JSON: {exc}") from None
        if not isinstance(options, dict):
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "train options must be a JSON object")
        return TrainEpoch(pb.train.run_id, pb.train.round, options)
    if kind == "evaluate":
        return Evaluate(pb.evaluate.run_id, pb.evaluate.round)
    if kind == "request_weights":
        r = pb.request_weights
        return RequestWeights(r.run_id, r.round, r.segment)
    if kind == "finish":
        return Finish(pb.finish.run_id, pb.finish.reason)
    raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "instruction has no kind set")


# -- Ready / PhaseDone / Error ---------------------------------------------------------------------------------
def ready_to_pb(m: Ready) -> session_pb2.Ready:
    return session_pb2.Ready(run_id=m.run_id, train_samples=m.train_samples, test_samples=m.test_samples)


def ready_from_pb(pb: session_pb2.Ready) -> Ready:
    return Ready(pb.run_id, pb.train_samples, pb.test_samples)


def phase_done_to_pb(m: PhaseDone) -> session_pb2.PhaseDone:
    s = m.summary
    return session_pb2.PhaseDone(
        ref=ref_to_pb(m.ref), num_samples=s.samples, steps=s.steps, loss_sum=s.loss_sum, correct=s.correct
    )


def phase_done_from_pb(pb: session_pb2.PhaseDone) -> PhaseDone:
    ref = _required_ref(pb, "phase_done")
    return PhaseDone(
        ref,
        PhaseSummary(
            samples=int(pb.num_samples), steps=int(pb.steps), loss_sum=float(pb.loss_sum), correct=int(pb.correct)
        ),
    )


def error_to_pb(m: ErrorReport) -> session_pb2.Error:
    return session_pb2.Error(code=m.code.value[0], message=m.message)


def error_from_pb(pb: session_pb2.Error) -> ErrorReport:
    return ErrorReport(status_from_number(pb.code), pb.message)


# -- ModelState ------------------------------------------------------------------------------------------------
def model_state_to_pb(m: ModelState, bulk: list[memoryview]) -> session_pb2.ModelState:
    return session_pb2.ModelState(
        run_id=m.run_id,
        round=m.round,
        segment=m.segment,
        num_samples=m.num_samples,
        tensors=encode_state(m.tensors, bulk),
    )


def model_state_from_pb(pb: session_pb2.ModelState, bulk: Bulk, limits: TensorLimits) -> ModelState:
    """Decoded writable: a paradigm may keep a received state and update it in place later."""
    tensors = decode_state(pb.tensors, limits=limits, writable=True, allow_nonfinite=False, bulk=bulk)
    return ModelState(pb.run_id, pb.round, pb.segment, tensors, int(pb.num_samples))


# -- CutTensor / CutReply --------------------------------------------------------------------------------------
def _extra_to_pb(extra: Mapping[str, torch.Tensor], target: Any, bulk: list[memoryview]) -> None:
    for name, tensor in extra.items():
        target[name].CopyFrom(encode_tensor(tensor, bulk))


def _extra_from_pb(source: Any, bulk: Bulk, limits: TensorLimits, *, allow_nonfinite: bool) -> dict[str, torch.Tensor]:
    out = {}
    for name in sorted(source):
        if not name:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "an extra tensor has an empty name")
        out[name] = decode_tensor(
            source[name], name=name, limits=limits, writable=True, allow_nonfinite=allow_nonfinite, bulk=bulk
        )
    return out


def cut_tensor_to_pb(m: CutTensor, bulk: list[memoryview]) -> session_pb2.CutTensor:
    pb = session_pb2.CutTensor(ref=ref_to_pb(m.ref), tensor=encode_cut(m.tensor, m.codec, bulk))
    if m.labels is not None:
        pb.labels.CopyFrom(encode_tensor(m.labels, bulk))
    if m.sample_ids is not None:
        pb.sample_ids.CopyFrom(encode_tensor(m.sample_ids, bulk))
    _extra_to_pb(m.extra, pb.extra, bulk)
    return pb


def cut_tensor_from_pb(pb: session_pb2.CutTensor, bulk: Bulk, limits: TensorLimits) -> CutTensor:
    """Decoded writable (the receiver computes with it); NaN/Inf refused: it would poison the receiver's model."""
    ref = _required_ref(pb, "cut_tensor")
    if not pb.HasField("tensor"):
        raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "cut_tensor message has no tensor")
    tensor, arrived = decode_cut(pb.tensor, name="cut tensor", limits=limits, bulk=bulk)
    labels = _optional(pb, "labels", bulk, limits)
    sample_ids = _optional(pb, "sample_ids", bulk, limits)
    extra = _extra_from_pb(pb.extra, bulk, limits, allow_nonfinite=False)
    return CutTensor(ref, tensor, labels, sample_ids, extra, arrived=arrived)


def cut_reply_to_pb(m: CutReply, bulk: list[memoryview]) -> session_pb2.CutReply:
    pb = session_pb2.CutReply(ref=ref_to_pb(m.ref), loss=m.loss, correct=m.correct, count=m.count)
    if m.tensor is not None:
        pb.tensor.CopyFrom(encode_cut(m.tensor, m.codec, bulk))
    _extra_to_pb(m.extra, pb.extra, bulk)
    return pb


def cut_reply_from_pb(pb: session_pb2.CutReply, bulk: Bulk, limits: TensorLimits) -> CutReply:
    ref = _required_ref(pb, "cut_reply")
    tensor = arrived = None
    if pb.HasField("tensor"):
        tensor, arrived = decode_cut(pb.tensor, name="cut reply", limits=limits, bulk=bulk)
    extra = _extra_from_pb(pb.extra, bulk, limits, allow_nonfinite=False)
    return CutReply(ref, tensor, pb.loss, pb.correct, pb.count, extra, arrived=arrived)


def _optional(pb: Any, field: str, bulk: Bulk, limits: TensorLimits) -> torch.Tensor | None:
    if not pb.HasField(field):
        return None
    return decode_tensor(getattr(pb, field), name=field, limits=limits, writable=True, bulk=bulk)


# -- Envelopes -------------------------------------------------------------------------------------------------
def client_to_pb(m: ClientMessage) -> tuple[session_pb2.ClientMessage, list[memoryview]]:
    """The envelope of ``m`` and the attachments to send after it."""
    bulk: list[memoryview] = []
    if isinstance(m, CutTensor):
        pb = session_pb2.ClientMessage(cut_tensor=cut_tensor_to_pb(m, bulk))
    elif isinstance(m, PhaseDone):
        pb = session_pb2.ClientMessage(phase_done=phase_done_to_pb(m))
    elif isinstance(m, ModelState):
        pb = session_pb2.ClientMessage(model_state=model_state_to_pb(m, bulk))
    elif isinstance(m, Ready):
        pb = session_pb2.ClientMessage(ready=ready_to_pb(m))
    elif isinstance(m, Hello):
        pb = session_pb2.ClientMessage(hello=hello_to_pb(m))
    elif isinstance(m, ErrorReport):
        pb = session_pb2.ClientMessage(error=error_to_pb(m))
    else:
        raise TypeError(f"not a client message: {type(m).__name__}")
    return pb, bulk


def client_from_pb(inbound: Inbound[session_pb2.ClientMessage], limits: TensorLimits = DEFAULT_LIMITS) -> ClientMessage:
    message, bulk = inbound.message, inbound.bulk
    kind = message.WhichOneof("body")
    decode = _CLIENT_DECODERS.get(kind or "")
    if decode is None:
        raise WireError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty message (no body set)" if kind is None else f"a {kind} cannot stand alone here",
        )
    decoded: ClientMessage = decode(getattr(message, kind), bulk, limits)
    return decoded


def server_to_pb(m: ServerMessage) -> tuple[session_pb2.ServerMessage, list[memoryview]]:
    bulk: list[memoryview] = []
    if isinstance(m, CutReply):
        pb = session_pb2.ServerMessage(cut_reply=cut_reply_to_pb(m, bulk))
    elif isinstance(m, ModelState):
        pb = session_pb2.ServerMessage(model_state=model_state_to_pb(m, bulk))
    elif isinstance(m, (RunSetup, TrainEpoch, Evaluate, RequestWeights, Finish)):
        pb = session_pb2.ServerMessage(instruction=instruction_to_pb(m))
    elif isinstance(m, Welcome):
        pb = session_pb2.ServerMessage(welcome=welcome_to_pb(m))
    elif isinstance(m, ErrorReport):
        pb = session_pb2.ServerMessage(error=error_to_pb(m))
    else:
        raise TypeError(f"not a server message: {type(m).__name__}")
    return pb, bulk


def server_from_pb(inbound: Inbound[session_pb2.ServerMessage], limits: TensorLimits = DEFAULT_LIMITS) -> ServerMessage:
    message, bulk = inbound.message, inbound.bulk
    kind = message.WhichOneof("body")
    decode = _SERVER_DECODERS.get(kind or "")
    if decode is None:
        raise WireError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty message (no body set)" if kind is None else f"a {kind} cannot stand alone here",
        )
    decoded: ServerMessage = decode(getattr(message, kind), bulk, limits)
    return decoded


_Decoder = Callable[[Any, Bulk, TensorLimits], Any]
_CLIENT_DECODERS: dict[str, _Decoder] = {
    "hello": lambda pb, bulk, limits: hello_from_pb(pb),
    "ready": lambda pb, bulk, limits: ready_from_pb(pb),
    "cut_tensor": cut_tensor_from_pb,
    "model_state": model_state_from_pb,
    "phase_done": lambda pb, bulk, limits: phase_done_from_pb(pb),
    "error": lambda pb, bulk, limits: error_from_pb(pb),
}
_SERVER_DECODERS: dict[str, _Decoder] = {
    "welcome": lambda pb, bulk, limits: welcome_from_pb(pb),
    "instruction": lambda pb, bulk, limits: instruction_from_pb(pb),
    "cut_reply": cut_reply_from_pb,
    "model_state": model_state_from_pb,
    "error": lambda pb, bulk, limits: error_from_pb(pb),
}
