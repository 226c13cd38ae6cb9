"""The client daemon: dials out to the server, holds its bottom (head/tail) segments and its own data
shard, and stays connected between runs.

Connection policy: reconnect with exponential backoff and jitter whenever the server goes away. Identity
problems are final: a session refused as PERMISSION_DENIED / UNAUTHENTICATED (wrong id, revoked) or a
protocol-version mismatch exits non-zero with the server's reason; repeated TLS handshake rejections
(a certificate the server does not trust, a plaintext client against a TLS server) also stop the daemon
with a message that names the likely cause, instead of retrying forever.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc
import torch

from slperf import __version__
from slperf.common.config import ConfigError, config_from_json
from slperf.common.data import DatasetUnavailable
from slperf.common.paradigms import registry as paradigms
from slperf.common.paradigms.base import ClientParadigm
from slperf.common.protocol.types import Phase, PhaseSummary, Reply, StepRef
from slperf.common.shards import build_client_data
from slperf.common.wire.codec import DEFAULT_LIMITS, decode_state, decode_tensor, encode_state, encode_tensor
from slperf.common.wire.errors import WireError
from slperf.common.wire.framing import ByteCounter, Deframer, Framer, Inbound
from slperf.common.transport.channel import create_channel, open_session
from slperf.common.wire.messages import PROTOCOL_VERSION, ref_from_pb, ref_to_pb, same_step
from slperf.v1 import session_pb2

log = logging.getLogger("slperf.client")

FATAL_CODES = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
               grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT}


class ClientFatal(Exception):
    """The daemon cannot go on (refused identity, bad credentials); the message says why and what to fix."""


class ServerError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class ClientOptions:
    server: str
    client_id: str
    credentials: grpc.ChannelCredentials | None  # None = plaintext (--insecure)
    server_name: str | None = None  # TLS name override when the address is not in the certificate
    cache_dir: Path | None = None
    data_dir: str | None = None
    max_handshake_failures: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    once: bool = False  # exit after the first run finishes (tests)
    torch_threads: int = 0


class SessionLink:
    """The client's side of one session stream: framing, byte counts, and the paradigm's ClientLink."""

    def __init__(self, call, run_id: str = ""):
        self.call = call
        self.run_id = run_id
        self.counter = ByteCounter()
        self._framer = Framer(session_pb2.ClientMessage, self.counter, outgoing_is_up=True)
        self._deframer = Deframer(session_pb2.ServerMessage, self.counter, incoming_is_up=False)

    async def send(self, message: session_pb2.ClientMessage, bulk: Sequence[memoryview] = ()) -> None:
        for envelope in self._framer.frames(message, bulk):
            await self.call.write(envelope)

    async def receive(self) -> Inbound[session_pb2.ServerMessage] | None:
        while True:
            envelope = await self.call.read()
            if envelope == grpc.aio.EOF:
                return None
            try:
                inbound = self._deframer.feed(envelope)
            except WireError as err:
                log.error("dropping a bad message from the server: %s", err.message)
                continue
            if inbound is not None:
                return inbound

    # -- ClientLink ---------------------------------------------------------------------------------
    async def send_activations(self, ref: StepRef, tensor: torch.Tensor, labels: torch.Tensor | None = None,
                               sample_ids: torch.Tensor | None = None) -> None:
        bulk: list[memoryview] = []
        acts = session_pb2.Activations(ref=ref_to_pb(ref), tensor=encode_tensor(tensor, bulk))
        if labels is not None:
            acts.labels.CopyFrom(encode_tensor(labels, bulk))
        if sample_ids is not None:
            acts.sample_ids.CopyFrom(encode_tensor(sample_ids, bulk))
        await self.send(session_pb2.ClientMessage(activations=acts), bulk)

    async def recv_reply(self, ref: StepRef, shape: Sequence[int] | None) -> Reply:
        while True:
            inbound = await self.receive()
            if inbound is None:
                raise ConnectionError("the server closed the session")
            message = inbound.message
            kind = message.WhichOneof("body")
            if kind == "error":
                raise ServerError(message.error.code, message.error.message)
            if kind != "gradients":
                raise ServerError(grpc.StatusCode.FAILED_PRECONDITION.value[0], f"expected gradients, got {kind}")
            grads = message.gradients
            got = ref_from_pb(grads.ref)
            if not same_step(got, ref):
                log.warning("dropping a reply for step %s while waiting for %s", got, ref)
                continue
            tensor = None
            if grads.HasField("tensor"):
                tensor = decode_tensor(grads.tensor, name="gradients", limits=DEFAULT_LIMITS, writable=True,
                                       bulk=inbound.bulk)
                if shape is not None and tuple(tensor.shape) != tuple(shape):
                    raise ServerError(grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                      f"gradient shape {list(tensor.shape)} does not match {list(shape)}")
            return Reply(got, tensor, grads.loss, grads.correct, grads.count)


class ClientDaemon:
    def __init__(self, opts: ClientOptions):
        self.opts = opts
        self.paradigm: ClientParadigm | None = None
        self.run_id = ""
        self._setup_key: tuple | None = None  # what the current paradigm was built for
        self.runs_finished = 0

    async def run_forever(self) -> None:
        delay = self.opts.backoff_initial
        handshake_failures = 0
        connected_once = False
        while True:
            try:
                finished = await self._session()
                connected_once = True
                handshake_failures = 0
                delay = self.opts.backoff_initial
                if finished and self.opts.once:
                    return
                log.warning("server closed the session; reconnecting")
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
                if code in FATAL_CODES:
                    raise ClientFatal(f"the server refused client '{self.opts.client_id}': {code.name}: {details}") from None
                if code == grpc.StatusCode.UNAVAILABLE and _looks_like_handshake_rejection(details):
                    handshake_failures += 1
                    if handshake_failures >= self.opts.max_handshake_failures:
                        raise ClientFatal(
                            f"the server at {self.opts.server} closed the connection during the TLS handshake "
                            f"{handshake_failures} times: it does not accept this client's credentials (a certificate "
                            f"from another CA, an expired certificate, or a plaintext client against a TLS server). "
                            f"Check --ca/--cert/--key. Last error: {details}") from None
                log.warning("cannot reach the server (%s: %s); retrying in %.1f s", code.name, details, delay)
            except ConnectionError as exc:
                log.warning("session lost (%s); reconnecting in %.1f s", exc, delay)
            if connected_once:
                handshake_failures = 0
            await asyncio.sleep(delay * (0.5 + random.random()))  # backoff with jitter, not synchronisation
            delay = min(delay * 2, self.opts.backoff_max)

    async def _session(self) -> bool:
        """One session. Returns True when a run finished in it (for ``once``), False when the server hung up."""
        opts = self.opts
        channel = create_channel(opts.server, opts.credentials, server_name=opts.server_name)
        async with channel:
            call = open_session(channel)
            link = SessionLink(call)
            await link.send(session_pb2.ClientMessage(hello=session_pb2.Hello(
                protocol_version=PROTOCOL_VERSION, client_id=opts.client_id, software_version=__version__,
                capabilities=["chunks", "attachments", "paradigms:" + ",".join(s.name for s in paradigms.all_specs())])))
            welcome = await link.receive()
            if welcome is None:
                await call  # surfaces the server's status (refusals end up here)
                raise ConnectionError("the server closed the session before Welcome")
            if welcome.message.WhichOneof("body") != "welcome":
                raise ConnectionError(f"expected Welcome, got {welcome.message.WhichOneof('body')}")
            log.info("connected to %s as %s", opts.server, opts.client_id)
            finished = False
            while True:
                inbound = await link.receive()
                if inbound is None:
                    await call
                    return finished
                done = await self._handle(link, inbound)
                if done:
                    finished = True
                    self.runs_finished += 1
                    if opts.once:
                        await call.done_writing()
                        return True

    async def _handle(self, link: SessionLink, inbound: Inbound[session_pb2.ServerMessage]) -> bool:
        message = inbound.message
        kind = message.WhichOneof("body")
        if kind == "instruction":
            return await self._instruction(link, message.instruction)
        if kind == "model_state":
            await self._set_weights(link, message.model_state, inbound.bulk)
        elif kind == "error":
            log.error("server error %d: %s", message.error.code, message.error.message)
        else:
            log.warning("unexpected %s from the server; ignored", kind)
        return False

    async def _instruction(self, link: SessionLink, instruction: session_pb2.Instruction) -> bool:
        kind = instruction.WhichOneof("kind")
        if kind == "setup":
            await self._setup(link, instruction.setup)
        elif kind in ("train", "evaluate"):
            part = getattr(instruction, kind)
            if self.paradigm is None or part.run_id != self.run_id:
                await self._report(link, grpc.StatusCode.FAILED_PRECONDITION, f"{kind} for run {part.run_id!r} before setup")
                return False
            link.run_id = self.run_id
            try:
                if kind == "train":
                    options = json.loads(part.options_json or "{}")
                    summary = await self.paradigm.train_epoch(link, part.round, options)
                    phase = Phase.TRAIN
                else:
                    summary = await self.paradigm.evaluate(link, part.round)
                    phase = Phase.EVAL
            except ServerError as exc:
                if exc.code == grpc.StatusCode.ABORTED.value[0]:
                    log.warning("the server ended %s of round %d early: %s", kind, part.round, exc)
                    return False
                await self._report(link, grpc.StatusCode.ABORTED, f"{kind} of round {part.round} aborted: {exc}")
                return False
            except (WireError, ValueError) as exc:
                # The server drops this client from the phase when it reports an error; the session goes on.
                await self._report(link, grpc.StatusCode.ABORTED, f"{kind} of round {part.round} aborted: {exc}")
                return False
            await self._phase_done(link, part.round, phase, summary)
        elif kind == "request_weights":
            request = instruction.request_weights
            segment = self.paradigm.segments.get(request.segment) if self.paradigm else None
            if segment is None:
                await self._report(link, grpc.StatusCode.NOT_FOUND, f"no segment {request.segment!r} here")
                return False
            bulk: list[memoryview] = []
            state = session_pb2.ModelState(run_id=request.run_id, round=request.round, segment=request.segment,
                                           num_samples=self.paradigm.data.train.num_samples,
                                           tensors=encode_state(segment.state_dict(), bulk))
            await link.send(session_pb2.ClientMessage(model_state=state), bulk)
        elif kind == "finish":
            log.info("run %s finished: %s", instruction.finish.run_id, instruction.finish.reason)
            self.paradigm = None
            self.run_id = ""
            self._setup_key = None
            return True
        return False

    async def _setup(self, link: SessionLink, setup: session_pb2.RunSetup) -> None:
        """Builds the paradigm's client side for the run; a reconnect to the same run keeps the one it has, with
        its optimiser state (momentum) and loaded shard, as an uninterrupted client would have them (the
        server sends the weights again before the next phase)."""
        key = (setup.run_id, setup.config_json, setup.client_index, setup.num_clients)
        if self.paradigm is not None and key == self._setup_key:
            log.info("run %s: rejoining with the training state this daemon already holds", setup.run_id)
            await self._ready(link, setup.run_id)
            return
        try:
            config = config_from_json(setup.config_json)
            spec = paradigms.get(config.paradigm)
            if config.torch_threads:
                torch.set_num_threads(config.torch_threads)
            builder = spec.client_data or build_client_data
            data = await asyncio.to_thread(builder, config, setup.client_index, self.opts.cache_dir)
            self.paradigm = await asyncio.to_thread(spec.client, config, setup.client_index, setup.num_clients, data)
        except (ConfigError, DatasetUnavailable, ValueError) as exc:
            await self._report(link, grpc.StatusCode.FAILED_PRECONDITION, f"cannot set up run {setup.run_id}: {exc}")
            return
        self.run_id = setup.run_id
        self._setup_key = key
        log.info("run %s: %s, client %d of %d, %d training samples", setup.run_id, config.paradigm,
                 setup.client_index + 1, setup.num_clients, data.train.num_samples)
        await self._ready(link, setup.run_id)

    async def _ready(self, link: SessionLink, run_id: str) -> None:
        data = self.paradigm.data
        await link.send(session_pb2.ClientMessage(ready=session_pb2.Ready(
            run_id=run_id, train_samples=data.train.num_samples, test_samples=data.test.num_samples)))

    async def _set_weights(self, link: SessionLink, state: session_pb2.ModelState,
                           bulk: Sequence[bytes | memoryview]) -> None:
        segment = self.paradigm.segments.get(state.segment) if self.paradigm else None
        if segment is None or state.run_id != self.run_id:
            await self._report(link, grpc.StatusCode.FAILED_PRECONDITION, f"weights for unknown segment {state.segment!r}")
            return
        try:
            tensors = decode_state(state.tensors, limits=DEFAULT_LIMITS, expected=segment.state_dict(), bulk=bulk)
        except WireError as err:
            await self._report(link, err.code, f"weights for {state.segment!r} rejected: {err.message}")
            return
        segment.load_state_dict(tensors, strict=True)

    async def _phase_done(self, link: SessionLink, round: int, phase: Phase, summary: PhaseSummary) -> None:
        ref = StepRef(self.run_id, round, summary.steps, phase)
        await link.send(session_pb2.ClientMessage(phase_done=session_pb2.PhaseDone(
            ref=ref_to_pb(ref), num_samples=summary.samples, steps=summary.steps, loss_sum=summary.loss_sum,
            correct=summary.correct)))

    async def _report(self, link: SessionLink, code: grpc.StatusCode, message: str) -> None:
        log.error("%s", message)
        await link.send(session_pb2.ClientMessage(error=session_pb2.Error(code=code.value[0], message=message)))


def _looks_like_handshake_rejection(details: str) -> bool:
    lowered = details.lower()
    if "connection refused" in lowered or "connect failed" in lowered and "refused" in lowered:
        return False
    return any(s in lowered for s in ("handshake", "socket closed", "ssl", "tls", "certificate", "connection reset"))
