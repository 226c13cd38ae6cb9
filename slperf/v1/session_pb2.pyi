from slperf.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_TRAIN: _ClassVar[Phase]
    PHASE_EVAL: _ClassVar[Phase]
PHASE_UNSPECIFIED: Phase
PHASE_TRAIN: Phase
PHASE_EVAL: Phase

class StepRef(_message.Message):
    __slots__ = ("run_id", "round", "step", "phase", "stage")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    step: int
    phase: Phase
    stage: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., step: _Optional[int] = ..., phase: _Optional[_Union[Phase, str]] = ..., stage: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "client_id", "software_version")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    client_id: str
    software_version: str
    def __init__(self, protocol_version: _Optional[int] = ..., client_id: _Optional[str] = ..., software_version: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_version", "session_id", "max_payload_bytes", "chunk_bytes", "max_envelope_bytes", "max_tensor_elements", "max_tensor_dims", "messages_per_second", "message_burst", "write_timeout_seconds")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ENVELOPE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TENSOR_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TENSOR_DIMS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_BURST_FIELD_NUMBER: _ClassVar[int]
    WRITE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    session_id: str
    max_payload_bytes: int
    chunk_bytes: int
    max_envelope_bytes: int
    max_tensor_elements: int
    max_tensor_dims: int
    messages_per_second: float
    message_burst: int
    write_timeout_seconds: float
    def __init__(self, protocol_version: _Optional[int] = ..., session_id: _Optional[str] = ..., max_payload_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., max_envelope_bytes: _Optional[int] = ..., max_tensor_elements: _Optional[int] = ..., max_tensor_dims: _Optional[int] = ..., messages_per_second: _Optional[float] = ..., message_burst: _Optional[int] = ..., write_timeout_seconds: _Optional[float] = ...) -> None: ...

class CutTensor(_message.Message):
    __slots__ = ("ref", "tensor", "labels", "sample_ids", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    ref: StepRef
    tensor: _tensor_pb2.Tensor
    labels: _tensor_pb2.Tensor
    sample_ids: _tensor_pb2.Tensor
    extra: _containers.MessageMap[str, _tensor_pb2.Tensor]
    def __init__(self, ref: _Optional[_Union[StepRef, _Mapping]] = ..., tensor: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., sample_ids: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., extra: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ...) -> None: ...

class CutReply(_message.Message):
    __slots__ = ("ref", "tensor", "loss", "correct", "count", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    ref: StepRef
    tensor: _tensor_pb2.Tensor
    loss: float
    correct: int
    count: int
    extra: _containers.MessageMap[str, _tensor_pb2.Tensor]
    def __init__(self, ref: _Optional[_Union[StepRef, _Mapping]] = ..., tensor: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., loss: _Optional[float] = ..., correct: _Optional[int] = ..., count: _Optional[int] = ..., extra: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ...) -> None: ...

class ModelState(_message.Message):
    __slots__ = ("run_id", "round", "segment", "num_samples", "tensors")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    segment: str
    num_samples: int
    tensors: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.NamedTensor]
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., segment: _Optional[str] = ..., num_samples: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[_tensor_pb2.NamedTensor, _Mapping]]] = ...) -> None: ...

class RunSetup(_message.Message):
    __slots__ = ("run_id", "config_json", "client_index", "num_clients", "exchange")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CLIENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    config_json: str
    client_index: int
    num_clients: int
    exchange: Exchange
    def __init__(self, run_id: _Optional[str] = ..., config_json: _Optional[str] = ..., client_index: _Optional[int] = ..., num_clients: _Optional[int] = ..., exchange: _Optional[_Union[Exchange, _Mapping]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("sample_shape", "dtypes", "codec")
    SAMPLE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    sample_shape: _containers.RepeatedScalarFieldContainer[int]
    dtypes: _containers.RepeatedScalarFieldContainer[_tensor_pb2.DType]
    codec: TensorCodec
    def __init__(self, sample_shape: _Optional[_Iterable[int]] = ..., dtypes: _Optional[_Iterable[_Union[_tensor_pb2.DType, str]]] = ..., codec: _Optional[_Union[TensorCodec, _Mapping]] = ...) -> None: ...

class TensorCodec(_message.Message):
    __slots__ = ("encoding", "per_channel", "topk_fraction", "error_feedback")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    PER_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    encoding: _tensor_pb2.TensorEncoding
    per_channel: bool
    topk_fraction: float
    error_feedback: bool
    def __init__(self, encoding: _Optional[_Union[_tensor_pb2.TensorEncoding, str]] = ..., per_channel: _Optional[bool] = ..., topk_fraction: _Optional[float] = ..., error_feedback: _Optional[bool] = ...) -> None: ...

class ExchangeStage(_message.Message):
    __slots__ = ("name", "up", "down", "labels", "sample_ids", "extra_up", "extra_down", "down_optional")
    class ExtraUpEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TensorSpec
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TensorSpec, _Mapping]] = ...) -> None: ...
    class ExtraDownEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TensorSpec
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TensorSpec, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    DOWN_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_UP_FIELD_NUMBER: _ClassVar[int]
    EXTRA_DOWN_FIELD_NUMBER: _ClassVar[int]
    DOWN_OPTIONAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    up: TensorSpec
    down: TensorSpec
    labels: bool
    sample_ids: bool
    extra_up: _containers.MessageMap[str, TensorSpec]
    extra_down: _containers.MessageMap[str, TensorSpec]
    down_optional: bool
    def __init__(self, name: _Optional[str] = ..., up: _Optional[_Union[TensorSpec, _Mapping]] = ..., down: _Optional[_Union[TensorSpec, _Mapping]] = ..., labels: _Optional[bool] = ..., sample_ids: _Optional[bool] = ..., extra_up: _Optional[_Mapping[str, TensorSpec]] = ..., extra_down: _Optional[_Mapping[str, TensorSpec]] = ..., down_optional: _Optional[bool] = ...) -> None: ...

class TensorLayout(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class SegmentLayout(_message.Message):
    __slots__ = ("name", "tensors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensors: _containers.RepeatedCompositeFieldContainer[TensorLayout]
    def __init__(self, name: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[TensorLayout, _Mapping]]] = ...) -> None: ...

class Exchange(_message.Message):
    __slots__ = ("train", "eval", "num_classes", "max_batch", "max_eval_batch", "segments")
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_EVAL_BATCH_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    train: _containers.RepeatedCompositeFieldContainer[ExchangeStage]
    eval: _containers.RepeatedCompositeFieldContainer[ExchangeStage]
    num_classes: int
    max_batch: int
    max_eval_batch: int
    segments: _containers.RepeatedCompositeFieldContainer[SegmentLayout]
    def __init__(self, train: _Optional[_Iterable[_Union[ExchangeStage, _Mapping]]] = ..., eval: _Optional[_Iterable[_Union[ExchangeStage, _Mapping]]] = ..., num_classes: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_eval_batch: _Optional[int] = ..., segments: _Optional[_Iterable[_Union[SegmentLayout, _Mapping]]] = ...) -> None: ...

class TrainEpoch(_message.Message):
    __slots__ = ("run_id", "round", "options_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    options_json: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., options_json: _Optional[str] = ...) -> None: ...

class Evaluate(_message.Message):
    __slots__ = ("run_id", "round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class RequestWeights(_message.Message):
    __slots__ = ("run_id", "round", "segment")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    segment: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., segment: _Optional[str] = ...) -> None: ...

class Finish(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Instruction(_message.Message):
    __slots__ = ("setup", "train", "evaluate", "request_weights", "finish")
    SETUP_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    setup: RunSetup
    train: TrainEpoch
    evaluate: Evaluate
    request_weights: RequestWeights
    finish: Finish
    def __init__(self, setup: _Optional[_Union[RunSetup, _Mapping]] = ..., train: _Optional[_Union[TrainEpoch, _Mapping]] = ..., evaluate: _Optional[_Union[Evaluate, _Mapping]] = ..., request_weights: _Optional[_Union[RequestWeights, _Mapping]] = ..., finish: _Optional[_Union[Finish, _Mapping]] = ...) -> None: ...

class PhaseDone(_message.Message):
    __slots__ = ("ref", "num_samples", "steps", "loss_sum", "correct")
    REF_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    ref: StepRef
    num_samples: int
    steps: int
    loss_sum: float
    correct: int
    def __init__(self, ref: _Optional[_Union[StepRef, _Mapping]] = ..., num_samples: _Optional[int] = ..., steps: _Optional[int] = ..., loss_sum: _Optional[float] = ..., correct: _Optional[int] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("run_id", "train_samples", "test_samples")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TEST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    train_samples: int
    test_samples: int
    def __init__(self, run_id: _Optional[str] = ..., train_samples: _Optional[int] = ..., test_samples: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("seq", "hello", "ready", "cut_tensor", "model_state", "phase_done", "chunk", "error", "attachments")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CUT_TENSOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_DONE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hello: Hello
    ready: Ready
    cut_tensor: CutTensor
    model_state: ModelState
    phase_done: PhaseDone
    chunk: _tensor_pb2.Chunk
    error: Error
    attachments: int
    def __init__(self, seq: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., ready: _Optional[_Union[Ready, _Mapping]] = ..., cut_tensor: _Optional[_Union[CutTensor, _Mapping]] = ..., model_state: _Optional[_Union[ModelState, _Mapping]] = ..., phase_done: _Optional[_Union[PhaseDone, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.Chunk, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., attachments: _Optional[int] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("seq", "welcome", "instruction", "cut_reply", "model_state", "chunk", "error", "attachments")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    CUT_REPLY_FIELD_NUMBER: _ClassVar[int]
    MODEL_STATE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    welcome: Welcome
    instruction: Instruction
    cut_reply: CutReply
    model_state: ModelState
    chunk: _tensor_pb2.Chunk
    error: Error
    attachments: int
    def __init__(self, seq: _Optional[int] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., instruction: _Optional[_Union[Instruction, _Mapping]] = ..., cut_reply: _Optional[_Union[CutReply, _Mapping]] = ..., model_state: _Optional[_Union[ModelState, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.Chunk, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., attachments: _Optional[int] = ...) -> None: ...
