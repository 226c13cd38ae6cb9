"""Conversions between the protobuf schema and the in-memory dataclasses paradigms work with."""
from __future__ import annotations

import grpc

from slperf.common.protocol.types import Phase, StepRef
from slperf.common.wire.errors import WireError
from slperf.v1 import session_pb2

PROTOCOL_VERSION = 2  # 2: attachments (raw tensor bytes after the message)


def ref_to_pb(ref: StepRef) -> session_pb2.StepRef:
    return session_pb2.StepRef(run_id=ref.run_id, round=ref.round, step=ref.step, phase=int(ref.phase),
                               stage=ref.stage)


def ref_from_pb(pb: session_pb2.StepRef) -> StepRef:
    if pb.phase not in (Phase.TRAIN, Phase.EVAL):
        raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"step ref has no valid phase (got {pb.phase})")
    return StepRef(pb.run_id, pb.round, pb.step, Phase(pb.phase), pb.stage)


def same_step(a: StepRef, b: StepRef) -> bool:
    return (a.run_id, a.round, a.step, a.phase, a.stage) == (b.run_id, b.round, b.step, b.phase, b.stage)
