"""Junk envelopes for fuzzing a session from inside a run: each case is one to two envelopes that the server must
refuse with exactly one in-stream error, and that no state of the run could mistake for a real message (their
run ids, rounds and transfer ids are never the real ones)."""

from __future__ import annotations

import random
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


def _bad_tensor(rng: random.Random) -> tensor_pb2.Tensor:
    kind = rng.randrange(5)
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
