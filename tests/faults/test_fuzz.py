"""Fuzzing the server with 10 000+ malformed messages while a well-behaved federation trains.

Asserts: the server never crashes or hangs, every bad message gets the right status code with a message
naming the problem, and the federation ends with exactly the weights it gets without the fuzzer.
"""

from __future__ import annotations

import math
import queue
import random
import struct
import threading
import zlib

import grpc
import pytest
import torch
import yaml

from slperf.common.security.credentials import client_channel_credentials, operator_channel_credentials
from slperf.common.transport.channel import grpc_options
from slperf.common.wire.serde import PROTOCOL_VERSION
from slperf.operator import OperatorClient
from slperf.slserver.checkpoint import load_checkpoint
from slperf.v1 import session_pb2, tensor_pb2

pytestmark = pytest.mark.slow

FUZZ_MESSAGES = 10_000
F32 = tensor_pb2.DTYPE_FLOAT32
IA, FP, RE, DL = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,
)


class LockstepSession:
    """A raw session stream: send one envelope (or raw bytes), then read the server's answer."""

    def __init__(self, channel: grpc.Channel):
        self._requests: queue.Queue = queue.Queue()
        call = channel.stream_stream(
            "/slperf.v1.SplitLearning/Session",
            request_serializer=lambda b: b,
            response_deserializer=session_pb2.ServerMessage.FromString,
        )
        self._responses = call(iter(self._requests.get, None), timeout=600)
        self.seq = 0

    def send(self, message: session_pb2.ClientMessage | bytes, *, seq: int | None = None) -> None:
        if isinstance(message, bytes):
            self._requests.put(message)
            return
        if seq is None:
            self.seq += 1
            seq = self.seq
        message.seq = seq
        self._requests.put(message.SerializeToString())

    def receive(self) -> session_pb2.ServerMessage:
        return next(self._responses)

    def close(self) -> None:
        self._requests.put(None)
        self._responses.cancel()


def _tensor(rng: random.Random) -> tuple[tensor_pb2.Tensor, grpc.StatusCode, str]:
    """A tensor that is wrong in one specific way, with the status and a word the error must contain."""
    kind = rng.randrange(7)
    if kind == 0:
        return tensor_pb2.Tensor(dtype=rng.choice([0, 11, 99, -1 & 0x7FFFFFFF]), shape=[2], data=b"\0" * 8), IA, "dtype"
    if kind == 1:
        n = rng.randrange(1, 64)
        delta = rng.choice([-1, 1, 3])
        return tensor_pb2.Tensor(dtype=F32, shape=[n], data=b"\0" * max(0, 4 * n + delta)), IA, "bytes"
    if kind == 2:
        values = [rng.choice([math.nan, math.inf, -math.inf])] + [0.0] * 3
        return tensor_pb2.Tensor(dtype=F32, shape=[4], data=struct.pack("<4f", *values)), IA, "NaN"
    if kind == 3:
        return tensor_pb2.Tensor(dtype=F32, shape=[3, -rng.randrange(1, 9)], data=b""), IA, "negative"
    if kind == 4:
        return tensor_pb2.Tensor(dtype=F32, shape=[1 << 20, 1 << 20, rng.randrange(2, 99)], data=b""), RE, "elements"
    if kind == 5:
        return tensor_pb2.Tensor(dtype=F32, shape=[1] * 9, data=b"\0" * 4), IA, "dimensions"
    return tensor_pb2.Tensor(dtype=F32, shape=[2, 2], data=b"\0" * 15), IA, "bytes"


def _fuzz_case(rng: random.Random, session: LockstepSession, run_id: str) -> tuple[grpc.StatusCode, str]:
    """Sends one bad message; returns the expected status and a word the error must name."""
    kind = rng.randrange(9)
    ref = session_pb2.StepRef(
        run_id=run_id, round=rng.randrange(3), step=rng.randrange(100), phase=session_pb2.PHASE_TRAIN
    )
    if kind == 0:  # random bytes
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        try:
            session_pb2.ClientMessage.FromString(junk)
        except Exception:
            session.send(junk)
            return IA, "parse"
        session.send(session_pb2.ClientMessage(), seq=0)  # parsed by chance: send a duplicate seq instead
        return FP, "seq"
    if kind in (1, 2):  # bad tensors in cut tensors and in model states
        tensor, code, word = _tensor(rng)
        if kind == 1:
            session.send(session_pb2.ClientMessage(cut_tensor=session_pb2.CutTensor(ref=ref, tensor=tensor)))
        else:
            session.send(
                session_pb2.ClientMessage(
                    model_state=session_pb2.ModelState(
                        run_id=run_id, segment="bottom", tensors=[tensor_pb2.NamedTensor(name="w", tensor=tensor)]
                    )
                )
            )
        return code, word
    if kind == 3:  # missing fields
        if rng.random() < 0.5:
            session.send(session_pb2.ClientMessage())
            return IA, "empty"
        session.send(session_pb2.ClientMessage(cut_tensor=session_pb2.CutTensor(ref=ref)))
        return IA, "no tensor"
    if kind == 4:  # duplicate / out-of-order sequence numbers
        session.send(session_pb2.ClientMessage(), seq=rng.randrange(0, session.seq + 1))
        return FP, "seq"
    if kind == 5:  # well-formed, but this client is not in the run (another run or round)
        good = tensor_pb2.Tensor(dtype=F32, shape=[1, 6, 12, 12], data=b"\0" * 4 * 864)
        session.send(session_pb2.ClientMessage(cut_tensor=session_pb2.CutTensor(ref=ref, tensor=good)))
        return FP, "not taking part"
    if kind == 6:  # a second hello
        session.send(
            session_pb2.ClientMessage(hello=session_pb2.Hello(protocol_version=PROTOCOL_VERSION, client_id="c3"))
        )
        return FP, "Hello"
    if kind == 7:  # attachments announced but not delivered, or named but not announced, or too many
        variant = rng.randrange(3)
        good = tensor_pb2.Tensor(dtype=F32, shape=[8], attachment=2)
        acts = session_pb2.ClientMessage(cut_tensor=session_pb2.CutTensor(ref=ref, tensor=good), attachments=1)
        if variant == 0:
            session.send(acts)  # waits for its attachment: no answer yet
            data = b"\0" * 32
            session.send(
                session_pb2.ClientMessage(
                    chunk=tensor_pb2.Chunk(
                        transfer_id=rng.randrange(1, 1 << 30),
                        index=0,
                        count=1,
                        total_bytes=32,
                        crc32=zlib.crc32(data),
                        data=data,
                    )
                )
            )
            return IA, "names attachment 2"
        if variant == 1:
            session.send(acts)
            session.send(session_pb2.ClientMessage(ready=session_pb2.Ready(run_id=run_id)))
            return IA, "expected attachment 1 of 1"
        acts.attachments = 1 << 20
        session.send(acts)
        return IA, "attachments"
    # broken chunked transfers
    payload = bytes(rng.randrange(256) for _ in range(32))
    variant = rng.randrange(3)
    tid = rng.randrange(1, 1 << 30)
    if variant == 0:
        chunk = tensor_pb2.Chunk(
            transfer_id=tid, index=0, count=1, total_bytes=32, crc32=zlib.crc32(payload) ^ 1, data=payload
        )
        code, word = DL, "CRC"
    elif variant == 1:
        chunk = tensor_pb2.Chunk(transfer_id=tid, index=1 + rng.randrange(5), count=9, total_bytes=32, data=payload)
        code, word = FP, "order"
    else:
        chunk = tensor_pb2.Chunk(transfer_id=tid, index=0, count=2, total_bytes=1 << 40, data=payload)
        code, word = RE, "allowed"
    session.send(session_pb2.ClientMessage(chunk=chunk))
    return code, word


def _final_weights(runs, run_id) -> dict[str, dict[str, torch.Tensor]]:
    return load_checkpoint(runs / run_id / "checkpoint.pt")["model"]


def test_fuzzed_server_keeps_serving_and_the_federation_result_is_unchanged(tmp_path, pki, daemons):
    runs = tmp_path / "runs"
    port = daemons.server(pki, runs)
    daemons.client(port, "c1", pki)
    daemons.client(port, "c2", pki)
    config = yaml.safe_dump(
        {
            "paradigm": "splitfed_v1",
            "clients": 2,
            "client_ids": ["c1", "c2"],
            "epochs": 2,
            "batch_size": 32,
            "lr": 0.05,
            "max_train_samples": 1200,
            "max_test_samples": 500,
            "seed": 4,
        }
    )
    op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")
    quiet = op.follow(op.start_run(config, "quiet"), lambda r: None)
    assert quiet.state == "finished", quiet.error

    run_id = op.start_run(config, "fuzzed")
    outcome: dict = {"sent": 0, "wrong": []}

    def fuzz() -> None:
        rng = random.Random(1234)
        options = grpc_options() + [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(f"127.0.0.1:{port}", client_channel_credentials(pki, "c3"), options=options) as ch:
            session = LockstepSession(ch)
            session.send(
                session_pb2.ClientMessage(hello=session_pb2.Hello(protocol_version=PROTOCOL_VERSION, client_id="c3"))
            )
            assert session.receive().WhichOneof("body") == "welcome"
            for _ in range(FUZZ_MESSAGES):
                code, word = _fuzz_case(rng, session, run_id)
                reply = session.receive()
                outcome["sent"] += 1
                error = reply.error
                if (
                    reply.WhichOneof("body") != "error"
                    or error.code != code.value[0]
                    or word.lower() not in error.message.lower()
                ):
                    outcome["wrong"].append((code.name, word, str(reply)[:200]))
            session.close()
            # Random bytes on the unary Control methods, with the operator's credentials.
            with grpc.secure_channel(f"127.0.0.1:{port}", operator_channel_credentials(pki), options=options) as op_ch:
                for method in ("StartRun", "Status", "StopRun"):
                    call = op_ch.unary_unary(
                        f"/slperf.v1.Control/{method}",
                        request_serializer=lambda b: b,
                        response_deserializer=lambda b: b,
                    )
                    try:
                        call(b"\xff\xff\xff\xff", timeout=10)
                        outcome["wrong"].append((method, "accepted garbage", ""))
                    except grpc.RpcError as err:
                        if err.code() != IA or "parse" not in err.details():
                            outcome["wrong"].append((method, err.code().name, err.details()))

    fuzzer = threading.Thread(target=fuzz)
    fuzzer.start()
    fuzzed = op.follow(run_id, lambda r: None)
    fuzzer.join(timeout=600)
    assert not fuzzer.is_alive(), "fuzzer hung: the server stopped answering"
    status = op.status()
    op.close()
    assert fuzzed.state == "finished", fuzzed.error
    assert outcome["sent"] == FUZZ_MESSAGES
    assert not outcome["wrong"], (
        len(outcome["wrong"]),
        sorted({w[:2] for w in outcome["wrong"]}),
        outcome["wrong"][:3],
    )
    assert daemons.server_proc.poll() is None and status.server_version
    quiet_w, fuzzed_w = _final_weights(runs, "quiet"), _final_weights(runs, "fuzzed")
    for segment in quiet_w:
        for name, tensor in quiet_w[segment].items():
            assert torch.equal(tensor, fuzzed_w[segment][name]), f"{segment}.{name} differs with the fuzzer running"
