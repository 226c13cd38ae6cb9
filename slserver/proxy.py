"""The server paradigm's handle on one client daemon: turns paradigm calls into protocol messages.

It resolves the client's *live* session on every call, so a client that reconnects (a new session) is
set up again for the run and rejoins with the weights the paradigm hands it next; every message it
reads back is checked against the run, round, phase and step it expects.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Mapping, Sequence

import grpc
import torch

from slperf.common.config import RunConfig
from slperf.common.paradigms.base import ActivationSpec, ClientGone
from slperf.common.protocol.types import ActivationBatch, Phase, PhaseSummary, Reply, State, StepRef
from slperf.common.protocol.types import SessionState
from slperf.common.wire.codec import decode_state, decode_tensor, encode_state, encode_tensor
from slperf.common.wire.errors import WireError
from slperf.common.wire.framing import Inbound
from slperf.common.wire.messages import ref_from_pb, ref_to_pb, same_step
from slperf.slserver.sessions import Session, SessionRegistry
from slperf.v1 import session_pb2


class ClientProxy:
    def __init__(self, client_id: str, index: int, registry: SessionRegistry, config: RunConfig, run_id: str):
        self.client_id = client_id
        self.index = index
        self.train_samples = 0
        self.test_samples = 0
        self._registry = registry
        self._config = config
        self._run_id = run_id
        self._setup_session: str | None = None
        self._timeout = config.client_timeout

    # -- session plumbing -------------------------------------------------------------------------
    async def session(self) -> Session:
        """The live session, set up for this run (again, after a reconnect)."""
        try:
            session = await self._registry.wait_session(self.client_id, self._config.rejoin_timeout)
        except asyncio.TimeoutError:
            raise ClientGone(self.client_id, f"not connected (waited rejoin_timeout = "
                                             f"{self._config.rejoin_timeout:.0f} s)") from None
        if session.session_id != self._setup_session:
            session.in_run = self._run_id
            session.drain()
            setup = session_pb2.RunSetup(run_id=self._run_id, config_json=self._config.to_json(),
                                         client_index=self.index, num_clients=self._config.clients)
            await self._send(session, session_pb2.ServerMessage(instruction=session_pb2.Instruction(setup=setup)))
            ready, _ = await self._expect(session, "ready")
            if ready.run_id != self._run_id:
                raise ClientGone(self.client_id, f"answered setup for run {ready.run_id!r}")
            self.train_samples, self.test_samples = ready.train_samples, ready.test_samples
            self._setup_session = session.session_id
            session.state = SessionState.IN_RUN
        return session

    async def _send(self, session: Session, message: session_pb2.ServerMessage,
                    bulk: Sequence[memoryview] = ()) -> None:
        try:
            await session.send(message, bulk)
        except (ConnectionError, grpc.aio.AioRpcError, RuntimeError) as exc:
            raise ClientGone(self.client_id, f"send failed: {exc}") from None

    async def _next(self, session: Session) -> Inbound[session_pb2.ClientMessage]:
        try:
            inbound = await session.next(self._timeout)
        except asyncio.TimeoutError:
            # A client dropped for silence must not keep this stream: if it resumed, the instructions queued
            # on it would keep the client one round behind the server for the rest of the run.
            session.close(f"dropped: no message for {self._timeout:.0f} s (client_timeout)")
            raise ClientGone(self.client_id, f"no message for {self._timeout:.0f} s (client_timeout)") from None
        except ConnectionError as exc:
            raise ClientGone(self.client_id, str(exc)) from None
        if inbound.message.WhichOneof("body") == "error":
            raise ClientGone(self.client_id, f"client reported an error: {inbound.message.error.message}")
        return inbound

    async def _expect(self, session: Session, kind: str) -> tuple[Any, Sequence[bytes | memoryview]]:
        """Reads until a message of ``kind`` arrives (returned with its attachments); anything else is refused
        with FAILED_PRECONDITION."""
        while True:
            inbound = await self._next(session)
            got = inbound.message.WhichOneof("body")
            if got == kind:
                return getattr(inbound.message, kind), inbound.bulk
            await session.send_error(grpc.StatusCode.FAILED_PRECONDITION, f"expected {kind}, got {got}; dropped")

    # -- ClientHandle -------------------------------------------------------------------------------
    async def set_weights(self, segment: str, state: Mapping[str, torch.Tensor], round: int) -> None:
        session = await self.session()
        bulk: list[memoryview] = []
        message = session_pb2.ModelState(run_id=self._run_id, round=round, segment=segment,
                                          tensors=encode_state(state, bulk))
        await self._send(session, session_pb2.ServerMessage(model_state=message), bulk)

    async def get_weights(self, segment: str, round: int, expected: Mapping[str, torch.Tensor]) -> tuple[State, int]:
        session = await self.session()
        request = session_pb2.RequestWeights(run_id=self._run_id, round=round, segment=segment)
        await self._send(session, session_pb2.ServerMessage(instruction=session_pb2.Instruction(request_weights=request)))
        while True:
            state, bulk = await self._expect(session, "model_state")
            if (state.run_id, state.round, state.segment) != (self._run_id, round, segment):
                await session.send_error(grpc.StatusCode.FAILED_PRECONDITION,
                                         f"weights for {state.run_id}/{state.round}/{state.segment!r} are not the ones requested")
                continue
            try:
                tensors = decode_state(state.tensors, limits=session.limits.tensor_limits, expected=expected,
                                       bulk=bulk)
            except WireError as err:
                await session.send_error(err.code, err.message)
                raise ClientGone(self.client_id, f"sent unusable weights: {err.message}") from None
            return tensors, int(state.num_samples)

    def train(self, round: int, spec: ActivationSpec | Sequence[ActivationSpec],
              options: Mapping[str, Any] | None = None) -> "ProxyPhaseStream":
        instruction = session_pb2.Instruction(train=session_pb2.TrainEpoch(
            run_id=self._run_id, round=round, options_json=json.dumps(dict(options or {}))))
        return ProxyPhaseStream(self, instruction, StepRef(self._run_id, round, 0, Phase.TRAIN), spec)

    def evaluate(self, round: int, spec: ActivationSpec | Sequence[ActivationSpec]) -> "ProxyPhaseStream":
        instruction = session_pb2.Instruction(evaluate=session_pb2.Evaluate(run_id=self._run_id, round=round))
        return ProxyPhaseStream(self, instruction, StepRef(self._run_id, round, 0, Phase.EVAL), spec)

    async def reply(self, reply: Reply) -> None:
        session = await self.session()
        grads = session_pb2.Gradients(ref=ref_to_pb(reply.ref), loss=reply.loss, correct=reply.correct, count=reply.count)
        bulk: list[memoryview] = []
        if reply.tensor is not None:
            grads.tensor.CopyFrom(encode_tensor(reply.tensor, bulk))
        await self._send(session, session_pb2.ServerMessage(gradients=grads), bulk)

    async def abort(self, reason: str) -> None:
        session = self._registry.get(self.client_id)
        if session is not None:
            await session.send_error(grpc.StatusCode.ABORTED, reason)

    async def finish(self, reason: str) -> None:
        session = self._registry.get(self.client_id)
        if session is None:
            return
        message = session_pb2.Instruction(finish=session_pb2.Finish(run_id=self._run_id, reason=reason))
        try:
            await session.send(session_pb2.ServerMessage(instruction=message))
        except (ConnectionError, grpc.aio.AioRpcError, RuntimeError):
            pass
        session.in_run = None
        session.state = SessionState.IDLE

    # -- validation -----------------------------------------------------------------------------------
    def check_activations(self, session: Session, message: session_pb2.Activations, expect: StepRef,
                          spec: ActivationSpec, bulk: Sequence[bytes | memoryview] = ()) -> ActivationBatch:
        ref = ref_from_pb(message.ref)
        if not same_step(ref, expect):
            code = grpc.StatusCode.FAILED_PRECONDITION
            if ref.run_id == expect.run_id and ref.round == expect.round and ref.step < expect.step:
                raise WireError(code, f"duplicate step {ref.step} (expected {expect.step}); not applied twice")
            raise WireError(code, f"activations for run {ref.run_id!r} round {ref.round} step {ref.step} "
                                  f"{ref.phase.name.lower()} arrived while the server expects round {expect.round} "
                                  f"step {expect.step} {expect.phase.name.lower()}")
        limits = session.limits.tensor_limits
        # NaN/Inf were already refused by the session's structural check; decode once more, writable.
        acts = decode_tensor(message.tensor, name="activations", limits=limits, writable=True, allow_nonfinite=True,
                             bulk=bulk)
        if acts.dtype not in spec.dtypes:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"activations have dtype {acts.dtype}, expected {spec.dtypes[0]}")
        shape = tuple(acts.shape)
        if len(shape) != 1 + len(spec.sample_shape) or shape[1:] != spec.sample_shape:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"activations have shape {list(shape)}, expected [batch, {', '.join(map(str, spec.sample_shape))}]")
        if not 1 <= shape[0] <= spec.max_batch:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"batch of {shape[0]} samples; must be 1..{spec.max_batch}")
        labels = None
        if spec.labels:
            if not message.HasField("labels"):
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "activations carry no labels; this paradigm needs them")
            labels = decode_tensor(message.labels, name="labels", limits=limits, writable=True, bulk=bulk)
            if labels.dtype != torch.int64 or tuple(labels.shape) != (shape[0],):
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"labels must be int64 of shape [{shape[0]}], got {labels.dtype} {list(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"labels must be in 0..{spec.num_classes - 1}")
        elif message.HasField("labels"):
            raise WireError(grpc.StatusCode.PERMISSION_DENIED, "labels must not leave the client in this paradigm")
        sample_ids = None
        if message.HasField("sample_ids"):
            sample_ids = decode_tensor(message.sample_ids, name="sample_ids", limits=limits, writable=True, bulk=bulk)
            if sample_ids.dtype != torch.int64 or tuple(sample_ids.shape) != (shape[0],):
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"sample_ids must be int64 of shape [{shape[0]}], got {sample_ids.dtype} {list(sample_ids.shape)}")
        return ActivationBatch(ref, acts, labels, sample_ids)


class ProxyPhaseStream:
    """Activations of one pass in step (and stage) order; invalid ones are refused on the stream and skipped."""

    def __init__(self, proxy: ClientProxy, instruction: session_pb2.Instruction, first: StepRef,
                 spec: ActivationSpec | Sequence[ActivationSpec]):
        self._proxy = proxy
        self._instruction = instruction
        self._first = first
        self._specs = [spec] if isinstance(spec, ActivationSpec) else list(spec)
        self.summary: PhaseSummary | None = None

    def __aiter__(self) -> AsyncIterator[ActivationBatch]:
        return self._run()

    async def _run(self) -> AsyncIterator[ActivationBatch]:
        proxy = self._proxy
        session = await proxy.session()
        await proxy._send(session, session_pb2.ServerMessage(instruction=self._instruction))
        stage = 0
        expect = StepRef(self._first.run_id, self._first.round, 0, self._first.phase, self._specs[0].stage)
        while True:
            inbound = await proxy._next(session)
            message = inbound.message
            kind = message.WhichOneof("body")
            if kind == "phase_done":
                done = message.phase_done
                ref = ref_from_pb(done.ref)
                if (ref.run_id, ref.round, ref.phase) != (expect.run_id, expect.round, expect.phase):
                    await session.send_error(grpc.StatusCode.FAILED_PRECONDITION, "phase_done for another phase; dropped")
                    continue
                self.summary = PhaseSummary(samples=int(done.num_samples), steps=int(done.steps),
                                            loss_sum=float(done.loss_sum), correct=int(done.correct))
                return
            if kind != "activations":
                await session.send_error(grpc.StatusCode.FAILED_PRECONDITION, f"expected activations, got {kind}; dropped")
                continue
            try:
                batch = proxy.check_activations(session, message.activations, expect, self._specs[stage], inbound.bulk)
            except WireError as err:
                await session.send_error(err.code, err.message)
                continue
            yield batch
            stage = (stage + 1) % len(self._specs)
            step = expect.step + (1 if stage == 0 else 0)
            expect = StepRef(expect.run_id, expect.round, step, expect.phase, self._specs[stage].stage)
