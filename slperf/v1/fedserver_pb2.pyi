from slperf.v1 import session_pb2 as _session_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeclareRoundRequest(_message.Message):
    __slots__ = ("run_id", "round", "segment", "layout", "aggregation", "trim_fraction", "participants", "settle")
    class ParticipantsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    TRIM_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SETTLE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    segment: str
    layout: _session_pb2.SegmentLayout
    aggregation: str
    trim_fraction: float
    participants: _containers.ScalarMap[str, int]
    settle: bool
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., segment: _Optional[str] = ..., layout: _Optional[_Union[_session_pb2.SegmentLayout, _Mapping]] = ..., aggregation: _Optional[str] = ..., trim_fraction: _Optional[float] = ..., participants: _Optional[_Mapping[str, int]] = ..., settle: _Optional[bool] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("protocol_version", "client_id", "run_id", "round", "segment")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    client_id: str
    run_id: str
    round: int
    segment: str
    def __init__(self, protocol_version: _Optional[int] = ..., client_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., segment: _Optional[str] = ...) -> None: ...

class DeclareRoundResponse(_message.Message):
    __slots__ = ("averaged", "missing")
    AVERAGED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    averaged: _containers.RepeatedScalarFieldContainer[str]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, averaged: _Optional[_Iterable[str]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...
