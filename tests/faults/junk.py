"""Junk envelopes for fuzzing a session from inside a run: each case is one to two envelopes that the server must
refuse with exactly one in-stream error, and that no state of the run could mistake for a real message (their
run ids, rounds and transfer ids are never the real ones)."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from slperf.common.wire.serde import PROTOCOL_VERSION
from slperf.v1 import session_pb2, tensor_pb2

F32 = tensor_pb2.DTYPE_FLOAT32
JUNK_RUN = "junk-run"
JUNK_ROUND = 9999  # beyond any run's epochs


@dataclass
class RawBytes:
    """Bytes sent as an envelope as they are (the session serializer calls SerializeToString)."""

    data: bytes

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf API's spelling
        return self.data


def _u4(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def _f4(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


_INT8 = tensor_pb2.TENSOR_ENCODING_INT8
_TOPK = tensor_pb2.TENSOR_ENCODING_TOPK
_FP16 = tensor_pb2.TENSOR_ENCODING_FLOAT16
_BF16 = tensor_pb2.TENSOR_ENCODING_BFLOAT16
_NAN = float("nan")

# Compressed cut tensors that break one rule each of docs/protocol.md 2.4.1; every receiver must refuse each with
# INVALID_ARGUMENT, whatever the exchange declares (the tensor is checked before the exchange is).
BAD_COMPRESSED: dict[str, Callable[[random.Random], tensor_pb2.Tensor]] = {
    "int8 with a wrong byte count": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 3], data=b"\0" * (6 + r.choice([-1, 1, 5])), encoding=_INT8, scales=[1.0], zero_points=[0]
    ),
    "int8 with a NaN scale": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 3], data=b"\0" * 6, encoding=_INT8, scales=[_NAN], zero_points=[0]
    ),
    "int8 with an infinite scale": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 3], data=b"\0" * 6, encoding=_INT8, scales=[float("inf")], zero_points=[0]
    ),
    "int8 with a zero or negative scale": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 3], data=b"\0" * 6, encoding=_INT8, scales=[r.choice([0.0, -0.5])], zero_points=[0]
    ),
    "int8 with a zero point outside -128..127": lambda r: tensor_pb2.Tensor(
        dtype=F32,
        shape=[2, 3],
        data=b"\0" * 6,
        encoding=_INT8,
        scales=[1.0],
        zero_points=[r.choice([128, -129, 1 << 30])],
    ),
    "int8 with neither 1 nor shape[1] scales": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 3], data=b"\0" * 6, encoding=_INT8, scales=[1.0] * r.choice([0, 2, 4]), zero_points=[0] * 2
    ),
    "int8 with fewer zero points than scales": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 3], data=b"\0" * 6, encoding=_INT8, scales=[1.0, 1.0, 1.0], zero_points=[0]
    ),
    "int8 whose scale overflows float32": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[1, 2], data=b"\x7f\x80", encoding=_INT8, scales=[3e38], zero_points=[-128]
    ),
    "topk with an index out of range": lambda r: tensor_pb2.Tensor(
        dtype=F32,
        shape=[2, 4],
        data=_f4(1.0, 2.0),
        encoding=_TOPK,
        indices=_u4(1, r.choice([8, 9, 1 << 31, (1 << 32) - 1])),
    ),
    "topk with a repeated index": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 4], data=_f4(1.0, 2.0, 3.0), encoding=_TOPK, indices=_u4(1, 3, 3)
    ),
    "topk with unsorted indices": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 4], data=_f4(1.0, 2.0), encoding=_TOPK, indices=_u4(5, 2)
    ),
    "topk with fewer values than indices": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 4], data=_f4(1.0), encoding=_TOPK, indices=_u4(1, 2)
    ),
    "topk with indices not a multiple of 4 bytes": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 4], data=_f4(1.0), encoding=_TOPK, indices=b"\1\0\0"
    ),
    "topk with more entries than elements": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2], data=_f4(1.0, 2.0, 3.0), encoding=_TOPK, indices=_u4(0, 1, 2)
    ),
    "topk with a NaN value": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 4], data=_f4(_NAN), encoding=_TOPK, indices=_u4(3)
    ),
    "fp16 with a wrong byte count": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2, 3], data=b"\0" * (12 + r.choice([-2, -1, 1, 12])), encoding=_FP16
    ),
    "fp16 holding an Inf": lambda r: tensor_pb2.Tensor(dtype=F32, shape=[1], data=b"\x00\x7c", encoding=_FP16),
    "bf16 holding a NaN": lambda r: tensor_pb2.Tensor(dtype=F32, shape=[1], data=b"\xc0\x7f", encoding=_BF16),
    "a compressed tensor of dtype int64": lambda r: tensor_pb2.Tensor(
        dtype=tensor_pb2.DTYPE_INT64, shape=[2], data=b"\0" * 4, encoding=_FP16
    ),
    "an unknown encoding": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2], data=b"\0" * 8, encoding=r.choice([5, 99])
    ),
    "int8 scales on an fp16 tensor": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2], data=b"\0" * 4, encoding=_FP16, scales=[1.0], zero_points=[0]
    ),
    "topk indices on an int8 tensor": lambda r: tensor_pb2.Tensor(
        dtype=F32, shape=[2], data=b"\0" * 2, encoding=_INT8, scales=[1.0], zero_points=[0], indices=_u4(0)
    ),
}


def _bad_tensor(rng: random.Random) -> tensor_pb2.Tensor:
    kind = rng.randrange(6)
    if kind == 5:
        return rng.choice(list(BAD_COMPRESSED.values()))(rng)
    if kind == 0:
        return tensor_pb2.Tensor(dtype=rng.choice([0, 11, 99]), shape=[2], data=b"\0" * 8)
    if kind == 1:
        n = rng.randrange(1, 64)
        return tensor_pb2.Tensor(dtype=F32, shape=[n], data=b"\0" * (4 * n + rng.choice([-1, 1, 3])))
    if kind == 2:
        return tensor_pb2.Tensor(dtype=F32, shape=[1], data=b"\x00\x00\xc0\x7f")  # NaN
    if kind == 3:
        return tensor_pb2.Tensor(dtype=F32, shape=[-1], data=b"")
    return tensor_pb2.Tensor(dtype=F32, shape=[2] * 12, data=b"\0" * 4 * 4096)  # too many dimensions


def _junk_ref(rng: random.Random, run_id: str) -> session_pb2.StepRef:
    return session_pb2.StepRef(
        run_id=rng.choice([run_id, JUNK_RUN]),
        round=JUNK_ROUND,
        step=rng.randrange(100),
        phase=rng.choice([session_pb2.PHASE_TRAIN, session_pb2.PHASE_EVAL]),
        stage=rng.choice(["", "head", "tail"]),
    )


def junk_case(rng: random.Random, run_id: str, next_seq: Callable[[], int], last_seq: int) -> list[object]:
    """One case: the envelopes to write, in order (their seqs taken from ``next_seq``, except a replayed one)."""
    kind = rng.randrange(12)

    def env(**body: object) -> session_pb2.ClientMessage:
        return session_pb2.ClientMessage(seq=next_seq(), **body)  # type: ignore[arg-type]

    if kind == 0:  # bytes that do not parse as an envelope
        while True:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 48)))
            try:
                session_pb2.ClientMessage.FromString(data)
            except Exception:
                return [RawBytes(data)]
    if kind == 1:
        return [env()]  # no body
    if kind == 2:  # a replayed sequence number
        return [session_pb2.ClientMessage(seq=rng.randrange(0, last_seq + 1), ready=session_pb2.Ready(run_id=JUNK_RUN))]
    if kind == 3:
        return [env(cut_tensor=session_pb2.CutTensor(ref=_junk_ref(rng, run_id), tensor=_bad_tensor(rng)))]
    if kind == 4:  # a well-formed cut tensor for a step that never comes
        good = tensor_pb2.Tensor(dtype=F32, shape=[1, 4], data=b"\0" * 16)
        return [env(cut_tensor=session_pb2.CutTensor(ref=_junk_ref(rng, run_id), tensor=good))]
    if kind == 5:
        return [env(phase_done=session_pb2.PhaseDone(steps=rng.randrange(10)))]  # no ref
    if kind == 6:
        return [env(phase_done=session_pb2.PhaseDone(ref=_junk_ref(rng, run_id), steps=3))]
    if kind == 7:
        return [env(hello=session_pb2.Hello(protocol_version=PROTOCOL_VERSION, client_id="c9"))]
    if kind == 8:
        return [env(ready=session_pb2.Ready(run_id=JUNK_RUN, train_samples=5))]
    if kind == 9:
        tensor = tensor_pb2.Tensor(dtype=F32, shape=[2], data=b"\0" * 8)
        state = session_pb2.ModelState(
            run_id=JUNK_RUN,
            round=JUNK_ROUND,
            segment="bottom",
            tensors=[tensor_pb2.NamedTensor(name="w", tensor=tensor)],
        )
        return [env(model_state=state)]
    if kind == 10:  # attachments announced, then something else
        named = tensor_pb2.Tensor(dtype=F32, shape=[1, 4], attachment=1)
        announced = env(cut_tensor=session_pb2.CutTensor(ref=_junk_ref(rng, run_id), tensor=named), attachments=1)
        return [announced, env(ready=session_pb2.Ready(run_id=JUNK_RUN))]
    payload = bytes(rng.randrange(256) for _ in range(32))
    tid = (1 << 40) + rng.randrange(1 << 30)  # far from the real transfers' ids
    variant = rng.randrange(3)
    if variant == 0:
        chunk = tensor_pb2.Chunk(
            transfer_id=tid, index=0, count=1, total_bytes=32, crc32=zlib.crc32(payload) ^ 1, data=payload
        )
    elif variant == 1:
        chunk = tensor_pb2.Chunk(transfer_id=tid, index=1 + rng.randrange(5), count=9, total_bytes=32, data=payload)
    else:
        chunk = tensor_pb2.Chunk(transfer_id=tid, index=0, count=2, total_bytes=1 << 40, data=payload)
    return [env(chunk=chunk)]
