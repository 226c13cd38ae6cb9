"""In-memory federation for the psl / sglr / splitfed_v2 / fedavg tests: the real server half of a paradigm
against real client halves, joined by fake ClientHandle / PhaseStream / ClientLink objects over asyncio
queues. Every message that "crosses the wire" is copied (as the codec would) and logged with its kind,
direction and tensor bytes, so a test can count exactly what a paradigm sends.

A client can be made to drop out after a number of activation messages (``die_after``): its handle then
raises ClientGone, as the real proxy does for a session that ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from slperf.common.config import RunConfig
from slperf.common.config_loader import config_from_mapping
from slperf.common.paradigms import registry
from slperf.common.paradigms.base import ClientGone, EvalResult, RoundResult
from slperf.common.protocol.types import CutReply, CutTensor, PhaseSummary, StepRef
from slperf.common.shards import build_client_data

RUN_ID = "inproc"


def make_config(**overrides) -> RunConfig:
    raw = {
        "dataset": "mnist",
        "clients": 2,
        "epochs": 1,
        "batch_size": 32,
        "lr": 0.05,
        "max_train_samples": 256,
        "max_test_samples": 200,
        "eval_batch_size": 100,
        "seed": 3,
    }
    raw.update(overrides)
    config, _ = config_from_mapping(raw)
    return config


def _copy(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    return obj


def _nbytes(*objs) -> int:
    total = 0
    for obj in objs:
        if isinstance(obj, torch.Tensor):
            total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            total += _nbytes(*obj.values())
    return total


@dataclass
class WireEntry:
    seq: int
    client: str
    direction: str  # "up" (client -> server) or "down"
    kind: str
    nbytes: int
    payload: Any = None


class Wire:
    """Log of everything that crossed any client's link, in global order."""

    def __init__(self):
        self.entries: list[WireEntry] = []

    def record(self, client: str, direction: str, kind: str, payload: Any, nbytes: int) -> None:
        self.entries.append(WireEntry(len(self.entries), client, direction, kind, nbytes, payload))

    def kinds(self, client: str | None = None, direction: str | None = None) -> list[str]:
        return [e.kind for e in self.select(client=client, direction=direction)]

    def select(self, **match) -> list[WireEntry]:
        return [e for e in self.entries if all(v is None or getattr(e, k) == v for k, v in match.items())]

    def bytes(self, client: str, direction: str, kinds: tuple[str, ...] | None = None) -> int:
        return sum(
            e.nbytes for e in self.select(client=client, direction=direction) if kinds is None or e.kind in kinds
        )


class Dead(Exception):
    """Raised inside a fake client daemon that was told to drop out."""


class FakeLink:
    """The client paradigm's ClientLink: activations go up, replies come down."""

    def __init__(self, conn: Conn):
        self.conn = conn
        self.run_id = RUN_ID

    async def send_cut_tensor(self, ref: StepRef, tensor, labels=None) -> None:
        conn = self.conn
        conn.sent_activations += 1
        if conn.die_after is not None and conn.sent_activations > conn.die_after:
            raise Dead()
        batch = CutTensor(ref, _copy(tensor), _copy(labels))
        self.sent_shape = tuple(tensor.shape)
        conn.up(("cut_tensor", batch), _nbytes(tensor, labels))

    async def recv_reply(self, ref: StepRef) -> CutReply:
        kind, reply = await self.conn.down_q.get()
        assert kind == "cut_reply", f"client {self.conn.client_id} expected cut_reply, got {kind}"
        assert reply.ref == ref, (reply.ref, ref)
        if reply.tensor is not None:  # bottom/top paradigms: the gradient has the activations' shape
            assert tuple(reply.tensor.shape) == self.sent_shape
        return reply


class Conn:
    """Both ends of one client's session: the server's handle and the client's fake daemon."""

    def __init__(self, wire: Wire, client_id: str, index: int, paradigm, die_after: int | None = None):
        self.wire = wire
        self.client_id = client_id
        self.index = index
        self.paradigm = paradigm
        self.train_samples = paradigm.data.train.num_samples
        self.die_after = die_after
        self.sent_activations = 0
        self.gone = False
        self.up_q: asyncio.Queue = asyncio.Queue()
        self.down_q: asyncio.Queue = asyncio.Queue()
        self.link = FakeLink(self)

    # -- plumbing -------------------------------------------------------------------------------------
    def up(self, message, nbytes: int) -> None:
        self.wire.record(self.client_id, "up", message[0], message[1], nbytes)
        self.up_q.put_nowait(message)

    def down(self, message, nbytes: int) -> None:
        if self.gone:
            raise ClientGone(self.client_id, "gone")
        self.wire.record(self.client_id, "down", message[0], message[1], nbytes)
        self.down_q.put_nowait(message)

    async def next_up(self):
        if self.gone:
            raise ClientGone(self.client_id, "gone")
        message = await self.up_q.get()
        if message[0] == "gone":
            self.gone = True
            raise ClientGone(self.client_id, "dropped out")
        return message

    async def daemon(self) -> None:
        """The client daemon's message loop, in memory."""
        try:
            while True:
                kind, payload = await self.down_q.get()
                if kind == "finish":
                    return
                if kind == "model_state":
                    segment, state = payload
                    self.paradigm.segments[segment].load_state_dict(state, strict=True)
                elif kind == "request_weights":
                    state = _copy(self.paradigm.segments[payload].state_dict())
                    self.up(("model_state", (state, self.train_samples)), _nbytes(state))
                elif kind == "train":
                    summary = await self.paradigm.train_epoch(self.link, payload[0], payload[1])
                    self.up(("phase_done", summary), 0)
                elif kind == "evaluate":
                    summary = await self.paradigm.evaluate(self.link, payload)
                    self.up(("phase_done", summary), 0)
                else:
                    raise AssertionError(f"client got unexpected {kind}")
        except (Dead, RuntimeError):  # a client process that dies: its session ends
            self.up_q.put_nowait(("gone", None))

    # -- ClientHandle -------------------------------------------------------------------------------------
    async def set_weights(self, segment, state, round) -> None:
        self.down(("model_state", (segment, _copy(dict(state)))), _nbytes(dict(state)))

    async def get_weights(self, segment, round, expected):
        self.down(("request_weights", segment), 0)
        kind, payload = await self.next_up()
        assert kind == "model_state", kind
        state, samples = payload
        assert set(state) == set(expected)
        return state, samples

    def train(self, round, options=None) -> FakeStream:
        return FakeStream(self, ("train", (round, dict(options or {}))), round)

    def evaluate(self, round) -> FakeStream:
        return FakeStream(self, ("evaluate", round), round)

    async def reply(self, reply: CutReply) -> None:
        copied = CutReply(reply.ref, _copy(reply.tensor), reply.loss, reply.correct, reply.count)
        self.down(("cut_reply", copied), _nbytes(reply.tensor))


class FakeStream:
    """A PhaseStream: activations in step order, then the client's PhaseDone summary."""

    def __init__(self, conn: Conn, instruction, round: int):
        self.conn = conn
        self.instruction = instruction
        self.round = round
        self.summary: PhaseSummary | None = None

    async def _run(self):
        self.conn.down(self.instruction, 0)
        step = 0
        while True:
            kind, payload = await self.conn.next_up()
            if kind == "phase_done":
                self.summary = payload
                return
            assert kind == "cut_tensor", kind
            assert payload.ref.step == step and payload.ref.round == self.round, payload.ref
            step += 1
            yield payload

    def __aiter__(self):
        return self._run()


class FakeContext:
    """ServerContext: compute on one worker thread (like the server), every call recorded."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.run_id = RUN_ID
        self.fed_server = None  # the server averages (no fed_server:)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.calls: list[tuple[str, Any]] = []

    async def compute(self, fn: Callable, *args):
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.executor, functools.partial(fn, *args))
        self.calls.append((getattr(fn, "__name__", repr(fn)), result))
        return result

    def results(self, name: str) -> list[Any]:
        return [r for n, r in self.calls if n == name]


@dataclass
class Federation:
    config: RunConfig
    server: Any
    clients: list[Any]
    conns: list[Conn]
    ctx: FakeContext
    wire: Wire
    rounds: list[RoundResult] = field(default_factory=list)
    evals: list[EvalResult] = field(default_factory=list)


_DATA_CACHE: dict[tuple, Any] = {}


def client_data(config: RunConfig, index: int):
    key = (
        config.dataset,
        config.clients,
        config.partition_method,
        config.partition_alpha,
        config.batch_size,
        config.seed,
        config.max_train_samples,
        config.max_test_samples,
        config.eval_batch_size,
        index,
    )
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = build_client_data(config, index)
    return _DATA_CACHE[key]


def run(
    config: RunConfig,
    *,
    setup: Callable[[Federation], None] | None = None,
    die_after: dict[int, int] | None = None,
    evaluate: bool = True,
    timeout: float = 60,
) -> Federation:
    """Runs ``config.epochs`` rounds (and evaluations) of the configured paradigm in memory."""
    spec = registry.get(config.paradigm)

    async def main() -> Federation:
        ctx = FakeContext(config)
        sample = client_data(config, 0)
        server = spec.server(config, ctx, sample.num_classes, sample.input_shape)
        clients = [spec.client(config, i, config.clients, client_data(config, i)) for i in range(config.clients)]
        wire = Wire()
        conns = [Conn(wire, f"c{i + 1}", i, clients[i], (die_after or {}).get(i)) for i in range(config.clients)]
        fed = Federation(config, server, clients, conns, ctx, wire)
        if setup:
            setup(fed)
        daemons = [asyncio.create_task(c.daemon()) for c in conns]
        try:
            for rnd in range(config.epochs):
                fed.rounds.append(await server.train_round(rnd, conns))
                if evaluate:
                    fed.evals.append(await server.evaluate(rnd, conns))
        finally:
            for conn in conns:
                if not conn.gone:
                    conn.down_q.put_nowait(("finish", None))
            await asyncio.wait_for(asyncio.gather(*daemons, return_exceptions=True), 10)
            ctx.executor.shutdown(wait=True)
        return fed

    async def bounded() -> Federation:
        return await asyncio.wait_for(main(), timeout)

    # One torch thread, as the test daemons use: the server's compute thread and the clients share the
    # event loop's process, and on a busy 2-core machine more threads only contend.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return asyncio.run(bounded())
    finally:
        torch.set_num_threads(threads)


def count_calls(obj, name: str) -> list[int]:
    """Wraps ``obj.name`` so every call is counted; returns the one-element counter."""
    counter = [0]
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)
    return counter
