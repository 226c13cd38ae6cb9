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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from slperf.common.protocol.errors import WireError
from slperf.common.protocol.messages import ClientMessage, ErrorReport, Hello, ServerMessage
from slperf.common.protocol.types import SessionState
from slperf.common.protocol.untrusted import shown
from slperf.common.transport.endpoint import Endpoint, ServerEndpoint, Side, Stream, StreamBroken, TransferStalled
from slperf.common.transport.rate import TokenBucket
from slperf.common.wire.codec import DEFAULT_LIMITS, TensorLimits
from slperf.common.wire.framing import ByteCounter

log = logging.getLogger("slperf.server.sessions")

_CLOSED = object()


@dataclass
class SessionLimits:
    """Every limit a client is held to, in one place (server flags map onto these)."""

    max_sessions: int = 256
    max_payload_bytes: int = 1 << 30
    tensor_limits: TensorLimits = DEFAULT_LIMITS
    inbox_size: int = 256
    # One byte budget per session for everything it makes the server buffer: the unfinished incoming message
    # (chunked transfers, attachments; at most max_payload_bytes) and the messages queued for the run. The
    # session reads its next message only while the queue leaves room for a whole one (memory_bytes -
    # max_payload_bytes); otherwise it stops reading and gRPC's flow control holds the client back.
    memory_bytes: int = (1 << 30) + (64 << 20)
    # An unfinished incoming message must be complete within this many seconds of its first chunk, or the
    # session is closed (DEADLINE_EXCEEDED) and its buffers freed.
    transfer_timeout: float = 120.0
    # A stream must say Hello within this; until it does it holds one of its peer's few stream slots.
    hello_timeout: float = 5.0
    # Bound on one write to a client (an envelope of at most a chunk): expiry means it stopped reading; it is dropped.
    write_timeout: float = 60.0
    messages_per_second: float = 5000.0
    message_burst: int = 10000
    # Incoming bytes per second; above it the session reads more slowly (throttled, nothing is dropped).
    bytes_per_second: float = float(512 << 20)
    # Log lines about one client's messages (its Error reports, its refused messages) per second (burst: 10);
    # the others are counted and the count logged.
    logged_reports_per_second: float = 1.0

    def __post_init__(self) -> None:
        if self.memory_bytes < self.max_payload_bytes:
            raise ValueError(
                f"the session memory budget ({self.memory_bytes} bytes) must hold at least one message of the "
                f"largest payload ({self.max_payload_bytes} bytes)"
            )

    @property
    def inbox_room(self) -> int:
        """Queued bytes beyond which a session stops reading: what is left of its budget for one whole message."""
        return self.memory_bytes - self.max_payload_bytes


async def _get_within(queue: asyncio.Queue[Any], timeout: float) -> Any:
    if hasattr(asyncio, "timeout"):  # Python 3.11+: unlike wait_for there, no extra task per message
        async with asyncio.timeout(timeout):
            return await queue.get()
    return await asyncio.wait_for(queue.get(), timeout)


class Session:
    """One connected client daemon: its endpoint, its inbox of messages for the run, and its state."""

    def __init__(self, client_id: str, peer: str, context: Stream, limits: SessionLimits, software_version: str = ""):
        self.client_id = client_id
        self.peer = peer
        self.software_version = software_version[:64]  # shown in Status; a version is a few characters
        self.session_id = secrets.token_hex(8)
        self.limits = limits
        self.connected_at = time.monotonic()
        self._bucket = TokenBucket(limits.messages_per_second, limits.message_burst)
        self._log_bucket = TokenBucket(limits.logged_reports_per_second, 10)
        self._unlogged_reports = 0
        self.endpoint: ServerEndpoint = Endpoint(
            context,
            Side.SERVER,
            name=client_id,
            limits=limits.tensor_limits,
            max_payload_bytes=limits.max_payload_bytes,
            admit=self._admit,
            max_bytes_per_second=limits.bytes_per_second,
            write_timeout=limits.write_timeout,
            transfer_timeout=limits.transfer_timeout,
        )
        # (message, its bytes on the wire), or _CLOSED
        self._inbox: asyncio.Queue[tuple[ClientMessage, int] | object] = asyncio.Queue(limits.inbox_size)
        self.queued_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self.closed = asyncio.Event()
        self.close_reason = ""
        # The status the server ends the stream with, once this side closed the session; None while open, or when
        # the client ended the stream itself. A session the server ends always says why.
        self.close_code: grpc.StatusCode | None = None
        # Set by the run while this client takes part; messages arriving for no run are refused.
        self.in_run: str | None = None
        self.state = SessionState.IDLE
        # Told of every in-stream error this session sends (the registry's listeners: the metrics).
        self.on_error: Callable[[grpc.StatusCode], None] | None = None

    @property
    def buffered_bytes(self) -> int:
        """What this session makes the server hold now: queued messages and the unfinished incoming one. At most
        ``limits.memory_bytes``."""
        return self.queued_bytes + self.endpoint.buffered_bytes

    def _took(self, size: int) -> None:
        self.queued_bytes -= size
        if self.queued_bytes <= self.limits.inbox_room:
            self._room.set()

    @property
    def counter(self) -> ByteCounter:
        return self.endpoint.counter

    @counter.setter
    def counter(self, value: ByteCounter) -> None:
        self.endpoint.counter = value

    def _admit(self) -> None:
        if not self._bucket.take():
            raise WireError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {self.limits.messages_per_second:.0f} messages per second "
                f"(messages_per_second); message dropped",
            )

    def _log_report(self, report: ErrorReport) -> None:
        """Logs what the client reports, escaped and truncated, at most ``logged_reports_per_second``: a client
        must not be able to fill the server's log or forge lines in it."""
        self._log_limited(
            logging.WARNING, "client %s reports: %s: %s", self.client_id, report.code.name, shown(report.message)
        )

    def _log_limited(self, level: int, fmt: str, *args: object) -> None:
        """Logs a line about something this client did, at most ``logged_reports_per_second`` (burst 10); what is
        left out is counted and the count logged with the next line that is."""
        if not self._log_bucket.take():
            self._unlogged_reports += 1
            return
        unlogged, self._unlogged_reports = self._unlogged_reports, 0
        more = f" ({unlogged} more lines about this client not logged)" if unlogged else ""
        log.log(level, fmt + "%s", *args, more)

    async def send(self, message: ServerMessage) -> None:
        """Sends ``message`` (its tensors' bytes follow as attachments) as one unit. Raises ConnectionError when the
        session is closed or the write fails; a failed write closes the session, since its stream is unusable."""
        if self.closed.is_set():
            raise ConnectionError(f"session of {self.client_id} is closed: {self.close_reason}")
        try:
            await self.endpoint.send(message)
        except StreamBroken as exc:
            self.close(f"dropped: {exc}", grpc.StatusCode.UNAVAILABLE)
            raise

    async def send_error(self, code: grpc.StatusCode, message: str) -> None:
        """An in-stream error: the offending message is dropped and the session goes on (unless the error cannot
        be delivered, which closes the session like any failed write)."""
        self._log_limited(logging.INFO, "client %s: %s: %s", self.client_id, code.name, message)
        if self.on_error is not None:
            self.on_error(code)
        try:
            await self.send(ErrorReport(code, message))
        except ConnectionError:
            pass

    async def next(self, timeout: float) -> ClientMessage:
        """The next message for the run; ConnectionError once the session is closed, TimeoutError after ``timeout``."""
        item = self._inbox.get_nowait() if not self._inbox.empty() else await _get_within(self._inbox, timeout)
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # keep waking later readers too
            raise ConnectionError(self.close_reason or "session closed")
        message, size = item  # type: ignore[misc]
        self._took(size)
        return message  # type: ignore[no-any-return]

    def drain(self) -> None:
        """Drops messages left over from an aborted phase, so the next phase starts clean."""
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item is _CLOSED:
                self._inbox.put_nowait(_CLOSED)
                return
            self._took(item[1])  # type: ignore[index]

    async def read_loop(self) -> None:
        """Reads until the client closes the stream. Every message is decoded and checked by the endpoint before
        anything else sees it; a bad one is answered on the stream and dropped. Back-pressure: while the queued
        messages leave no room for a whole message in the session's budget, nothing more is read."""
        while True:
            while self.queued_bytes > self.limits.inbox_room and not self.closed.is_set():
                self._room.clear()
                await self._room.wait()
            before = self.endpoint.counter.up
            try:
                message = await self.endpoint.receive()
            except WireError as err:
                await self.send_error(err.code, err.message)
                continue
            except TransferStalled as exc:
                self.close(str(exc), grpc.StatusCode.DEADLINE_EXCEEDED)
                return
            size = max(0, self.endpoint.counter.up - before)
            if message is None:
                self.close("client closed the stream")
                return
            if isinstance(message, Hello):
                await self.send_error(grpc.StatusCode.FAILED_PRECONDITION, "Hello was already received on this session")
                continue
            if isinstance(message, ErrorReport):
                self._log_report(message)
            if self.in_run is None:
                await self.send_error(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"client {self.client_id} is not taking part in a run; message dropped",
                )
                continue
            self.queued_bytes += size
            await self._inbox.put((message, size))

    def close(self, reason: str, code: grpc.StatusCode | None = None) -> None:
        """Ends the session. ``code`` is the status the server ends the client's stream with (None when the client
        ended it: there is nobody left to tell)."""
        if not self.closed.is_set():
            self.close_reason = reason
            self.close_code = code
            self.closed.set()
            self.state = SessionState.DISCONNECTED
            self._room.set()
            try:
                self._inbox.put_nowait(_CLOSED)
            except asyncio.QueueFull:
                self.drain()
                self._inbox.put_nowait(_CLOSED)


class SessionListener(Protocol):
    """Told of the registry's events as they happen (the server's metrics)."""

    def session_added(self, session: Session) -> None: ...

    def stream_error(self, code: grpc.StatusCode) -> None: ...


@dataclass
class SessionRegistry:
    """Live sessions by client id; waiters are woken by a condition, never by polling."""

    limits: SessionLimits = field(default_factory=SessionLimits)
    sessions: dict[str, Session] = field(default_factory=dict)
    # Bytes of sessions that have ended, so a client's totals survive its reconnects.
    retired_bytes: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Messages of sessions that have ended, by kind (``ByteCounter.kinds_up``), for the same reason.
    retired_kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    listeners: list[SessionListener] = field(default_factory=list)

    def _stream_error(self, code: grpc.StatusCode) -> None:
        for listener in self.listeners:
            listener.stream_error(code)

    def __post_init__(self) -> None:
        self._changed = asyncio.Condition()

    def client_bytes(self, client_id: str) -> tuple[int, int]:
        up, down = self.retired_bytes.get(client_id, (0, 0))
        live = self.sessions.get(client_id)
        if live is not None:
            up, down = up + live.counter.up, down + live.counter.down
        return up, down

    def client_kinds(self, client_id: str) -> dict[str, int]:
        """The messages a client sent over all its sessions so far, by kind: what reached this server."""
        kinds = dict(self.retired_kinds.get(client_id, {}))
        live = self.sessions.get(client_id)
        for kind, n in (live.counter.kinds_up if live is not None else {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
        return kinds

    def _retire(self, session: Session) -> None:
        up, down = self.retired_bytes.get(session.client_id, (0, 0))
        self.retired_bytes[session.client_id] = (up + session.counter.up, down + session.counter.down)
        kinds = self.retired_kinds.setdefault(session.client_id, {})
        for kind, n in session.counter.kinds_up.items():
            kinds[kind] = kinds.get(kind, 0) + n

    async def add(self, session: Session) -> Session | None:
        """Registers a session; returns the one it replaces (a reconnect), which the caller closes."""
        async with self._changed:
            old = self.sessions.get(session.client_id)
            if old is not None:
                # A reconnect: the old session's bytes move to the retired total now, not when it unwinds.
                del self.sessions[session.client_id]
                self._retire(old)
                old.counter = ByteCounter()
            if old is None and len(self.sessions) >= self.limits.max_sessions:
                raise WireError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server has {len(self.sessions)} sessions, the limit (max_sessions) is reached",
                )
            self.sessions[session.client_id] = session
            session.on_error = self._stream_error
            for listener in self.listeners:
                listener.session_added(session)
            self._changed.notify_all()
            return old

    async def remove(self, session: Session) -> None:
        async with self._changed:
            if self.sessions.get(session.client_id) is session:
                del self.sessions[session.client_id]
            self._retire(session)
            self._changed.notify_all()

    def get(self, client_id: str) -> Session | None:
        return self.sessions.get(client_id)

    async def wait_for(self, predicate: Callable[[dict[str, Session]], bool], timeout: float | None) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.sessions))

        await asyncio.wait_for(_wait(), timeout)

    async def wait_session(self, client_id: str, timeout: float) -> Session:
        """The client's live session, waiting up to ``timeout`` for one. Read under the condition's lock, so a
        session removed between the wake-up and the read cannot turn into a KeyError."""

        async def _wait() -> Session:
            async with self._changed:
                await self._changed.wait_for(lambda: client_id in self.sessions)
                return self.sessions[client_id]

        return await asyncio.wait_for(_wait(), timeout)
