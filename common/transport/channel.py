"""gRPC plumbing of the session stream: channel and server options, channels, and the stream's (de)serializers.

The session method is registered by hand rather than through the generated stub, because its serializer
must also send the hand-built chunk envelopes of ``slperf.common.wire.chunking`` (the generated one accepts
protobuf messages only) and its deserializer parses chunk envelopes into views of the received bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from slperf.v1 import session_pb2

# gRPC's own per-message cap: chunks are ~1 MiB, so this only has to cover one chunk plus framing.
GRPC_MAX_MESSAGE_BYTES = 8 << 20


def grpc_options(max_message_bytes: int = GRPC_MAX_MESSAGE_BYTES) -> list[tuple[str, int | str]]:
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


def envelope_parser(envelope_type: Any) -> Callable[[bytes], Any]:
    """The session stream's gRPC deserializer: a chunk envelope is parsed by hand so that its data stays a view
    of the received bytes (see ``chunking.parse_chunk_envelope``); everything else by the protobuf runtime,
    whose exceptions propagate."""
    # Imported here, not at the top: chunking needs numpy, and the channel helpers below must stay cheap to
    # import for the health check, which runs every few seconds in every container.
    from slperf.common.wire.chunking import parse_chunk_envelope

    def parse(data: bytes) -> Any:
        return parse_chunk_envelope(data, envelope_type) or envelope_type.FromString(data)

    return parse


def serialize_envelope(envelope: Any) -> bytes:
    """The session stream's gRPC serializer: protobuf envelopes and hand-built ``ChunkEnvelope``s alike."""
    data: bytes = envelope.SerializeToString()
    return data


SESSION_METHOD = "/slperf.v1.SplitLearning/Session"


def open_session(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall[Any, Any]:
    """The client's session stream, with the serializer that also sends hand-built chunk envelopes (the
    generated stub's serializer accepts protobuf messages only)."""
    return channel.stream_stream(
        SESSION_METHOD,
        request_serializer=serialize_envelope,
        response_deserializer=envelope_parser(session_pb2.ServerMessage),
    )(wait_for_ready=False)


def _channel_options(server_name: str | None, options: list[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    chosen = grpc_options() if options is None else list(options)
    if server_name:
        chosen.append(("grpc.ssl_target_name_override", server_name))
    return chosen


def create_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    *,
    server_name: str | None = None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to ``target``: plaintext when ``credentials`` is None (``--insecure``), TLS otherwise.

    ``server_name`` is the name to expect in the server's certificate when the address dialled is not in it (a
    node IP, a tunnel); ``options`` replace :func:`grpc_options` (the session defaults) when given.
    """
    chosen = _channel_options(server_name, options)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=chosen)
    return grpc.aio.secure_channel(target, credentials, options=chosen)


def create_sync_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    *,
    server_name: str | None = None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """The blocking counterpart of :func:`create_channel`, for the operator commands and the health check."""
    chosen = _channel_options(server_name, options)
    if credentials is None:
        return grpc.insecure_channel(target, options=chosen)
    return grpc.secure_channel(target, credentials, options=chosen)


class Malformed:
    """Stands in for a request whose bytes do not parse, so the handler can answer INVALID_ARGUMENT
    (gRPC would otherwise answer a deserialisation failure with INTERNAL and end a session stream)."""

    def __init__(self, size: int, reason: str):
        self.size = size
        self.reason = reason

    def WhichOneof(self, _name: str) -> str:  # noqa: N802 - the protobuf API's spelling
        return "malformed"

    def ByteSize(self) -> int:  # noqa: N802
        return self.size


def safe_parser(message_name: str, parse_message: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A gRPC deserializer that returns ``Malformed`` instead of raising: gRPC answers a deserializer that raises
    with UNKNOWN on a unary call and ends a session stream, and a peer's bad bytes must get INVALID_ARGUMENT naming
    the problem (in-stream, on the session). ``message_name`` is the full protobuf name, for the error."""

    def parse(data: bytes) -> Any:
        try:
            return parse_message(data)
        except Exception as exc:  # protobuf's DecodeError and friends: the peer's fault, never ours
            return Malformed(len(data), f"{len(data)} bytes do not parse as {message_name}: {exc}")

    return parse


def session_request_parser() -> Callable[[bytes], Any]:
    """The server's deserializer for the session stream: chunk envelopes by hand, never raising."""
    return safe_parser(session_pb2.ClientMessage.DESCRIPTOR.full_name, envelope_parser(session_pb2.ClientMessage))
