"""Who may call what, decided before a handler runs: ``grpc.aio.ServerInterceptor``s, as in gRPC's own
``auth/async_customized_auth_server.py`` example, so that no handler repeats an authorisation check.

The server installs them in this order (the first is the outermost)::

    MalformedRequestInterceptor   a unary request whose bytes do not parse gets INVALID_ARGUMENT
    OperatorInterceptor           every Control call needs the operator certificate     (not with --insecure)
    ClientIdentityInterceptor     a session needs a client certificate; its identity    (not with --insecure)
                                  is handed to the session handler
    ClientIdentityInterceptor     the same for the Inference service's Predict          (not with --insecure)

An interceptor only sees the method name and the metadata when it is called (``HandlerCallDetails``), not the
peer's certificate, so each one returns the handler wrapped in a check that runs first when the call starts,
where ``context.auth_context()`` is available.

What stays at the session's Hello (:class:`HelloAuthorizer`), and why: the id the client claims arrives in the
Hello message, which the handler reads from the stream; no interceptor can see it before the handler does. So
the checks about the *claimed* id run there: the allowed list (``--allowed-clients``, which with ``--insecure``
has nothing but the claim to go on), the claim matching the certificate's name, and the revocation list (keyed
by that id). What depends on the connection alone (is there a certificate identity, is it a client's) is
refused at call start, before the peer may send anything.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from slperf.common.protocol.untrusted import shown
from slperf.common.security.errors import TLSConfigError
from slperf.common.security.identity import Identity, Role, identity_from_auth_context
from slperf.common.transport.channel import Malformed, safe_parser
from slperf.common.transport.endpoint import SessionContext
from slperf.slserver.revocation import RevocationList
from slperf.v1 import service_pb2

log = logging.getLogger("slperf.server")

CONTROL_SERVICE = "slperf.v1.Control"
SESSION_METHOD = "/slperf.v1.SplitLearning/Session"
PREDICT_METHOD = "/slperf.v1.Inference/Predict"  # split inference: a client's call, guarded like its session
HEALTH_WATCH_METHOD = "/grpc.health.v1.Health/Watch"

# A method handler of any call. RpcMethodHandler is generic in the stubs only (at run time it cannot be
# subscripted), hence the quotes.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]
# Runs when the call starts, before the handler; aborts the call to refuse it. Its first argument is the request
# of a unary call, or the request iterator of a streaming one (which it must not read).
Check = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]

# The verified client identity of the current session call, set by ClientIdentityInterceptor. A gRPC call runs
# in a contextvars.Context of its own, so the value never leaks into another call.
_session_identity: ContextVar[Identity | None] = ContextVar("slperf_session_identity", default=None)


def session_identity() -> Identity | None:
    """The client identity :class:`ClientIdentityInterceptor` verified for the current call; None without it."""
    return _session_identity.get()


def _service_of(method: str) -> str:
    """``/slperf.v1.Control/Status`` -> ``slperf.v1.Control``."""
    return method.split("/")[1] if method.count("/") >= 2 else ""


# --------------------------------------------------------------------------------------------------------------
# Wrapping a handler


_BEHAVIOUR = {  # (request_streaming, response_streaming) -> (the handler's attribute, gRPC's constructor)
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _checked_first(behaviour: Behaviour, check: Check) -> Behaviour:
    """``behaviour`` with ``check`` awaited before it, of the same kind (coroutine or async generator), which is
    what grpc.aio looks at to decide how to drive it."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(request, context)
            async for item in behaviour(request, context):
                yield item

        return stream
    if inspect.iscoroutinefunction(behaviour):

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(request, context)
            return await behaviour(request, context)

        return call
    raise TypeError(f"{behaviour!r} is not an async handler; the server's handlers are all async")


def with_check(handler: Handler, check: Check, request_deserializer: Callable[[bytes], Any] | None = None) -> Handler:
    """A copy of ``handler`` whose behaviour awaits ``check`` first (and parses with ``request_deserializer``
    when given)."""
    return with_wrapper(handler, lambda behaviour: _checked_first(behaviour, check), request_deserializer)


def with_wrapper(
    handler: Handler,
    wrap: Callable[[Behaviour], Behaviour],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """A copy of ``handler`` whose behaviour is ``wrap(behaviour)`` (which must keep its kind: coroutine or async
    generator), parsing with ``request_deserializer`` when given."""
    attr, make = _BEHAVIOUR[(handler.request_streaming, handler.response_streaming)]
    return make(
        wrap(getattr(handler, attr)),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# --------------------------------------------------------------------------------------------------------------
# Interceptors


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """A unary request of ``services`` whose bytes do not parse is answered with INVALID_ARGUMENT naming the
    message type, before anything else (authorisation included) looks at the call, exactly as the hand-written
    handlers did before the generated registration was used."""

    def __init__(self, services: Iterable[ServiceDescriptor]):
        self._message_names = {
            f"/{service.full_name}/{method.name}": method.input_type.full_name
            for service in services
            for method in service.methods
        }

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        name = self._message_names.get(handler_call_details.method)
        if handler is None or name is None or handler.request_streaming:
            return handler  # streams answer bad bytes in-stream (see transport.channel.Malformed)
        parse = handler.request_deserializer
        if parse is None:  # raw bytes in; never so for a generated registration, which always names the message
            return handler
        return with_check(handler, _refuse_malformed, safe_parser(name, parse))


async def _refuse_malformed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if isinstance(request, Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)


class OperatorInterceptor(grpc.aio.ServerInterceptor):
    """Every call of the Control service needs the operator certificate; anything else gets PERMISSION_DENIED."""

    def __init__(self, service: str = CONTROL_SERVICE):
        self._service = service

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or _service_of(handler_call_details.method) != self._service:
            return handler
        return with_check(handler, _require_operator)


async def _require_operator(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    ident = identity_from_auth_context(context.auth_context())
    if ident is None or ident.role != Role.OPERATOR:
        who = f"a {ident.role} certificate ({ident.name})" if ident else "no certificate"
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED, f"Control calls need the operator certificate; this connection has {who}"
        )


class ClientIdentityInterceptor(grpc.aio.ServerInterceptor):
    """A session needs a client certificate that is neither revoked nor outside the allowed list, checked when the
    stream opens, before the peer may send anything: no slperf identity on the connection is UNAUTHENTICATED, an
    operator's or a server's certificate PERMISSION_DENIED, a revoked one UNAUTHENTICATED, one outside
    ``--allowed-clients`` PERMISSION_DENIED. (A certificate the CA issued must not be able to hold streams open
    just by never saying Hello.) The verified identity is handed to the handler (:func:`session_identity`), where
    :class:`HelloAuthorizer` compares it with the claim."""

    def __init__(
        self,
        method: str = SESSION_METHOD,
        *,
        revocations: RevocationList | None = None,
        allowed: frozenset[str] | None = None,
    ):
        self._method = method
        self._revocations = revocations or RevocationList(None)
        self._allowed = allowed

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method != self._method:
            return handler
        return with_check(handler, self._require_client)

    async def _require_client(self, _requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        ident = identity_from_auth_context(context.auth_context())
        if ident is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate identity on this connection")
        if ident.role != Role.CLIENT:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"a {ident.role} certificate cannot open a client session"
            )
        await refuse_unless_admitted(context, ident.name, self._revocations, self._allowed)
        _session_identity.set(ident)


async def refuse_unless_admitted(
    context: SessionContext,
    client_id: str,
    revocations: RevocationList,
    allowed: frozenset[str] | None,
) -> None:
    """Aborts the call when ``client_id`` is outside the allowed list or revoked (or the list cannot be read:
    fail closed)."""
    if allowed is not None and client_id not in allowed:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"client {shown(client_id)} is not in this server's allowed list (--allowed-clients)",
        )
    try:
        revoked = revocations.is_revoked(client_id)
    except TLSConfigError as exc:
        log.error("%s", exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the server cannot read its revocation list")
    if revoked:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"client {shown(client_id)} has been revoked")


@dataclass(frozen=True)
class StreamLimit:
    """How many calls of one long-lived streaming method may be open at once: per peer, and in all."""

    method: str
    per_peer: int
    total: int
    flag: str  # the server flag that sets ``per_peer``, named in the refusal


def peer_key(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Whom a call is counted against: the certificate's identity, else (``--insecure``) the peer's address
    without its port, since a client opens a new port per connection."""
    ident = identity_from_auth_context(context.auth_context())
    if ident is not None:
        return f"{ident.role}:{ident.name}"
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class StreamLimitInterceptor(grpc.aio.ServerInterceptor):
    """Caps the open calls of one streaming method per peer and in all; beyond a cap the call is refused at once
    with RESOURCE_EXHAUSTED naming the flag. This, not gRPC's server-wide ``maximum_concurrent_rpcs``, is the
    session budget, so that streams (open sessions, health watches) can never starve the operator's Control calls
    or the health check: those are not counted here at all."""

    def __init__(self, limit: StreamLimit):
        self.limit = limit
        self.open: Counter[str] = Counter()
        self.total = 0

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method != self.limit.method:
            return handler
        return with_guard(handler, self._admitted)

    @asynccontextmanager
    async def _admitted(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        key = peer_key(context)
        if self.open[key] >= self.limit.per_peer:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this peer already has {self.open[key]} open {self.limit.method} calls, the limit "
                f"({self.limit.flag}) is reached",
            )
        if self.total >= self.limit.total:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server has {self.total} open {self.limit.method} calls, the limit is reached",
            )
        self.open[key] += 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            self.open[key] -= 1
            if not self.open[key]:
                del self.open[key]


Guard = Callable[[grpc.aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]


def _guarded(behaviour: Behaviour, guard: Guard) -> Behaviour:
    """``behaviour`` run inside ``guard(context)``, of the same kind (coroutine or async generator)."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with guard(context):
                async for item in behaviour(request, context):
                    yield item

        return stream
    if inspect.iscoroutinefunction(behaviour):

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with guard(context):
                return await behaviour(request, context)

        return call
    raise TypeError(f"{behaviour!r} is not an async handler; the server's handlers are all async")


def with_guard(handler: Handler, guard: Guard) -> Handler:
    """A copy of ``handler`` whose behaviour runs inside ``guard(context)`` (entered when the call starts, left
    when it ends however it ends)."""
    attr, make = _BEHAVIOUR[(handler.request_streaming, handler.response_streaming)]
    return make(
        _guarded(getattr(handler, attr), guard),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


@dataclass(frozen=True)
class AdmissionPolicy:
    """What the server admits before a call's handler runs (from the server's flags)."""

    revocations: RevocationList
    allowed: frozenset[str] | None = None
    streams_per_client: int = 3
    max_session_streams: int = 288
    max_health_watches: int = 64


def server_interceptors(*, insecure: bool, policy: AdmissionPolicy | None = None) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors of the server, in order (the first runs first); with ``--insecure`` there is no
    certificate to check, but the stream limits (by peer address) still hold."""
    policy = policy or AdmissionPolicy(RevocationList(None))
    chain: list[grpc.aio.ServerInterceptor] = [
        MalformedRequestInterceptor([service_pb2.DESCRIPTOR.services_by_name["Control"]]),
    ]
    if not insecure:
        chain += [
            OperatorInterceptor(),
            ClientIdentityInterceptor(revocations=policy.revocations, allowed=policy.allowed),
            ClientIdentityInterceptor(PREDICT_METHOD, revocations=policy.revocations, allowed=policy.allowed),
        ]
    chain += [
        StreamLimitInterceptor(
            StreamLimit(
                SESSION_METHOD, policy.streams_per_client, policy.max_session_streams, "--max-streams-per-client"
            )
        ),
        StreamLimitInterceptor(
            StreamLimit(
                HEALTH_WATCH_METHOD, policy.streams_per_client, policy.max_health_watches, "--max-streams-per-client"
            )
        ),
    ]
    return chain


# --------------------------------------------------------------------------------------------------------------
# At the Hello


class HelloAuthorizer:
    """The session checks that need the client id claimed in the Hello (see the module docstring for why they
    cannot run in an interceptor): the claim matching the certificate, and (for ``--insecure``, where the claim is
    all there is) the allowed list; the revocation list once more, in case it changed since the stream opened."""

    def __init__(
        self,
        certs_dir: Path | None,
        insecure: bool,
        allowed: frozenset[str] | None = None,
        revocations: RevocationList | None = None,
    ):
        self.certs_dir = certs_dir
        self.insecure = insecure
        self.allowed = allowed  # None = every client the CA certified
        self.revocations = revocations or RevocationList(certs_dir)

    async def client(self, context: SessionContext, claimed: str) -> None:
        """Aborts the call unless ``claimed`` is allowed, the certificate names it, and it is not revoked."""
        if not self.insecure:
            ident = session_identity()
            if ident is None:  # fail closed if the server was built without ClientIdentityInterceptor
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "no client certificate identity on this connection"
                )
            if ident.name != claimed:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"client id {shown(claimed)} does not match the certificate's client id {shown(ident.name)}",
                )
        await refuse_unless_admitted(context, claimed, self.revocations, self.allowed)
