"""Session framing shared by both ends of the stream: sequence numbers, chunking, byte accounting.

Every envelope (``ClientMessage``/``ServerMessage``) on the wire gets a strictly increasing ``seq``, so a
message replayed after a reconnect is recognised and dropped. An envelope whose serialized size is above
the chunk threshold is sent as a series of ``Chunk`` envelopes of about 1 MiB (gRPC moves big payloads
several times faster that way, and no single message ever nears the receive limit). Bytes are counted
here, at the transport, as the exact serialized size of every envelope in each direction.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc

from slperf.common.wire.chunking import DEFAULT_CHUNK_BYTES, Reassembler, split_payload
from slperf.common.wire.errors import WireError

E = TypeVar("E")  # ClientMessage or ServerMessage

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 30
# gRPC's own per-message cap: chunks are ~1 MiB, so this only has to cover one chunk plus framing.
GRPC_MAX_MESSAGE_BYTES = 8 << 20


def grpc_options(max_message_bytes: int = GRPC_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Channel/server options in one place: message caps and keepalives for long-lived sessions."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # grpcio waits for a PING ack (keepalive pings included) up to this, not up to keepalive_timeout_ms
        # (default 60 s): without it a silently dead peer is noticed only ~80 s after its last byte.
        ("grpc.http2.ping_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


@dataclass
class ByteCounter:
    """Exact serialized bytes per direction, bucketed by a label the owner sets (e.g. the round)."""

    up: int = 0
    down: int = 0
    messages_up: int = 0
    messages_down: int = 0
    by_label: dict[str, list[int]] = field(default_factory=dict)
    label: str = ""

    def add(self, *, up: int = 0, down: int = 0) -> None:
        self.up += up
        self.down += down
        self.messages_up += 1 if up else 0
        self.messages_down += 1 if down else 0
        bucket = self.by_label.setdefault(self.label, [0, 0])
        bucket[0] += up
        bucket[1] += down


class Framer(Generic[E]):
    """Turns outgoing messages into envelopes: assigns seq, chunks big ones, counts bytes."""

    def __init__(self, envelope_type: type[E], counter: ByteCounter, *, outgoing_is_up: bool,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        self._type = envelope_type
        self._seq = itertools.count(1)
        self._transfer = itertools.count(1)
        self._counter = counter
        self._up = outgoing_is_up
        self.chunk_bytes = chunk_bytes

    def frames(self, message: E) -> list[E]:
        message.seq = next(self._seq)  # type: ignore[attr-defined]
        size = message.ByteSize()  # type: ignore[attr-defined]
        if size <= self.chunk_bytes:
            envelopes = [message]
        else:
            payload = message.SerializeToString()  # type: ignore[attr-defined]
            chunks = split_payload(payload, next(self._transfer), self.chunk_bytes)
            envelopes = [self._type(seq=next(self._seq), chunk=c) for c in chunks]  # type: ignore[call-arg]
        for env in envelopes:
            n = size if env is message else env.ByteSize()  # type: ignore[attr-defined]
            self._counter.add(**({"up": n} if self._up else {"down": n}))
        return envelopes


class Deframer(Generic[E]):
    """Checks incoming envelopes: seq strictly increasing, chunks reassembled; counts bytes."""

    def __init__(self, envelope_type: type[E], counter: ByteCounter, *, incoming_is_up: bool,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES):
        self._type = envelope_type
        self._last_seq = 0
        self._counter = counter
        self._up = incoming_is_up
        self._reassembler = Reassembler(max_payload_bytes)

    def feed(self, envelope: E) -> E | None:
        """Returns the complete message, None while a chunked one is still arriving; raises WireError."""
        n = envelope.ByteSize()  # type: ignore[attr-defined]
        self._counter.add(**({"up": n} if self._up else {"down": n}))
        seq = envelope.seq  # type: ignore[attr-defined]
        if seq <= self._last_seq:
            raise WireError(grpc.StatusCode.FAILED_PRECONDITION,
                            f"message seq {seq} is not after {self._last_seq}: duplicate or replayed message dropped")
        self._last_seq = seq
        if envelope.WhichOneof("body") != "chunk":  # type: ignore[attr-defined]
            return envelope
        payload = self._reassembler.feed(envelope.chunk)  # type: ignore[attr-defined]
        if payload is None:
            return None
        inner = self._type()
        try:
            inner.ParseFromString(payload)  # type: ignore[attr-defined]
        except Exception:  # protobuf raises DecodeError; any parse failure is the sender's fault
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "reassembled chunks do not parse as a message") from None
        if inner.WhichOneof("body") in (None, "chunk"):  # type: ignore[attr-defined]
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "a chunked transfer must carry one non-chunk message")
        return inner
