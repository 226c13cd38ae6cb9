"""Client sessions on the server: one long-lived bidirectional stream per client daemon.

The session owns the stream. A reader task checks every incoming envelope (sequence, chunks, tensor
structure) before anything else sees it, so a malformed message is answered with INVALID_ARGUMENT on
that stream and never reaches a paradigm; well-formed messages for the run wait in the session's inbox
until the run's client proxy asks for them. Writes are serialised by a lock because several tasks
(the run, the control service) may send on one stream.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import grpc

from slperf.common.protocol.types import SessionState
from slperf.common.wire.codec import DEFAULT_LIMITS, TensorLimits, decode_tensor
from slperf.common.wire.errors import WireError
from slperf.common.wire.framing import ByteCounter, Deframer, Framer, Inbound
from slperf.v1 import session_pb2

log = logging.getLogger("slperf.server.sessions")

_CLOSED = object()


@dataclass
class SessionLimits:
    """Every limit a client is held to, in one place (server flags map onto these)."""

    max_sessions: int = 256
    max_payload_bytes: int = 1 << 30
    tensor_limits: TensorLimits = DEFAULT_LIMITS
    inbox_size: int = 256
    hello_timeout: float = 30.0
    messages_per_second: float = 5000.0
    message_burst: int = 10000


class TokenBucket:
    """Per-session message rate limit; refills continuously from the loop clock (no timers, no polling)."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


async def _get_within(queue: asyncio.Queue, timeout: float) -> Any:
    if hasattr(asyncio, "timeout"):  # Python 3.11+: unlike wait_for there, no extra task per message
        async with asyncio.timeout(timeout):
            return await queue.get()
    return await asyncio.wait_for(queue.get(), timeout)


class Session:
    """One connected client daemon."""

    def __init__(self, client_id: str, peer: str, context: grpc.aio.ServicerContext, limits: SessionLimits):
        self.client_id = client_id
        self.peer = peer
        self.session_id = secrets.token_hex(8)
        self.resume_token = secrets.token_urlsafe(24)
        self.context = context
        self.limits = limits
        self.counter = ByteCounter()
        self.connected_at = time.monotonic()
        self._framer = Framer(session_pb2.ServerMessage, self.counter, outgoing_is_up=False)
        self._deframer = Deframer(session_pb2.ClientMessage, self.counter, incoming_is_up=True,
                                  max_payload_bytes=limits.max_payload_bytes)
        self._inbox: asyncio.Queue[Any] = asyncio.Queue(limits.inbox_size)
        self._send_lock = asyncio.Lock()
        self._bucket = TokenBucket(limits.messages_per_second, limits.message_burst)
        self.closed = asyncio.Event()
        self.close_reason = ""
        # Set by the run while this client takes part; messages arriving for no run are refused.
        self.in_run: str | None = None
        self.state = SessionState.IDLE

    async def send(self, message: session_pb2.ServerMessage, bulk: Sequence[memoryview] = ()) -> None:
        """Sends ``message`` and its attachments (``codec.encode_tensor``'s ``bulk``) as one unit."""
        if self.closed.is_set():
            raise ConnectionError(f"session of {self.client_id} is closed: {self.close_reason}")
        async with self._send_lock:
            for envelope in self._framer.frames(message, bulk):
                await self.context.write(envelope)

    async def send_error(self, code: grpc.StatusCode, message: str) -> None:
        """An in-stream error: the offending message is dropped and the session goes on."""
        log.info("client %s: %s: %s", self.client_id, code.name, message)
        try:
            await self.send(session_pb2.ServerMessage(error=session_pb2.Error(code=code.value[0], message=message)))
        except (ConnectionError, grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError):
            pass

    async def next(self, timeout: float) -> Inbound[session_pb2.ClientMessage]:
        """The next message for the run, or ``_CLOSED``-based ConnectionError / TimeoutError."""
        item = self._inbox.get_nowait() if not self._inbox.empty() else await _get_within(self._inbox, timeout)
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # keep waking later readers too
            raise ConnectionError(self.close_reason or "session closed")
        return item

    def drain(self) -> None:
        """Drops messages left over from an aborted phase, so the next phase starts clean."""
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item is _CLOSED:
                self._inbox.put_nowait(_CLOSED)
                return

    def _check_structure(self, inbound: Inbound[session_pb2.ClientMessage]) -> None:
        """Validates every tensor in the message without copying it (shape/bytes/dtype/limits)."""
        msg, bulk = inbound.message, inbound.bulk
        kind = msg.WhichOneof("body")
        if kind == "activations":
            if not msg.activations.HasField("tensor"):
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "activations message has no tensor")
            decode_tensor(msg.activations.tensor, name="activations", limits=self.limits.tensor_limits,
                          writable=False, allow_nonfinite=False, bulk=bulk)
            if msg.activations.HasField("labels"):
                decode_tensor(msg.activations.labels, name="labels", limits=self.limits.tensor_limits, writable=False,
                              bulk=bulk)
        elif kind == "model_state":
            for named in msg.model_state.tensors:
                decode_tensor(named.tensor, name=named.name or "<unnamed>", limits=self.limits.tensor_limits,
                              writable=False, allow_nonfinite=False, bulk=bulk)
        elif kind == "hello":
            raise WireError(grpc.StatusCode.FAILED_PRECONDITION, "Hello was already received on this session")
        elif kind is None:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "empty message (no body set)")

    async def read_loop(self) -> None:
        """Reads until the client closes the stream; returns the reason."""
        while True:
            envelope = await self.context.read()
            if envelope == grpc.aio.EOF:
                self.close("client closed the stream")
                return
            if not self._bucket.take():
                await self.send_error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"more than {self.limits.messages_per_second:.0f} messages per second "
                                      f"(messages_per_second); message dropped")
                continue
            if envelope.WhichOneof("body") == "malformed":  # bytes that did not parse (slserver.malformed.Malformed)
                self.counter.add(up=envelope.ByteSize())
                await self.send_error(grpc.StatusCode.INVALID_ARGUMENT, envelope.reason)
                continue
            try:
                inbound = self._deframer.feed(envelope)
                if inbound is None:
                    continue
                self._check_structure(inbound)
            except WireError as err:
                await self.send_error(err.code, err.message)
                continue
            message = inbound.message
            if message.WhichOneof("body") == "error":
                log.warning("client %s reports: %s", self.client_id, message.error.message)
            if self.in_run is None:
                await self.send_error(grpc.StatusCode.FAILED_PRECONDITION,
                                      f"client {self.client_id} is not taking part in a run; message dropped")
                continue
            await self._inbox.put(inbound)

    def close(self, reason: str) -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()
            self.state = SessionState.DISCONNECTED
            try:
                self._inbox.put_nowait(_CLOSED)
            except asyncio.QueueFull:
                self.drain()
                self._inbox.put_nowait(_CLOSED)


@dataclass
class SessionRegistry:
    """Live sessions by client id; waiters are woken by a condition, never by polling."""

    limits: SessionLimits = field(default_factory=SessionLimits)
    sessions: dict[str, Session] = field(default_factory=dict)
    # Bytes of sessions that have ended, so a client's totals survive its reconnects.
    retired_bytes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._changed = asyncio.Condition()

    def client_bytes(self, client_id: str) -> tuple[int, int]:
        up, down = self.retired_bytes.get(client_id, (0, 0))
        live = self.sessions.get(client_id)
        if live is not None:
            up, down = up + live.counter.up, down + live.counter.down
        return up, down

    async def add(self, session: Session) -> Session | None:
        """Registers a session; returns the one it replaces (a reconnect), which the caller closes."""
        async with self._changed:
            old = self.sessions.get(session.client_id)
            if old is not None:
                # A reconnect: the old session's bytes move to the retired total now, not when it unwinds.
                del self.sessions[session.client_id]
                up, down = self.retired_bytes.get(old.client_id, (0, 0))
                self.retired_bytes[old.client_id] = (up + old.counter.up, down + old.counter.down)
                old.counter = ByteCounter()
            if old is None and len(self.sessions) >= self.limits.max_sessions:
                raise WireError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"server has {len(self.sessions)} sessions, the limit (max_sessions) is reached")
            self.sessions[session.client_id] = session
            self._changed.notify_all()
            return old

    async def remove(self, session: Session) -> None:
        async with self._changed:
            if self.sessions.get(session.client_id) is session:
                del self.sessions[session.client_id]
            up, down = self.retired_bytes.get(session.client_id, (0, 0))
            self.retired_bytes[session.client_id] = (up + session.counter.up, down + session.counter.down)
            self._changed.notify_all()

    def get(self, client_id: str) -> Session | None:
        return self.sessions.get(client_id)

    async def wait_for(self, predicate, timeout: float | None) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.sessions))

        await asyncio.wait_for(_wait(), timeout)

    async def wait_session(self, client_id: str, timeout: float) -> Session:
        await self.wait_for(lambda s: client_id in s, timeout)
        return self.sessions[client_id]
