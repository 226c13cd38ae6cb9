"""The Inference service: split inference on finished runs' models (``slperf predict``).

Who may ask: the connection's client certificate (``ClientIdentityInterceptor`` guards ``Predict`` as it guards
the session; the allowed list and the revocation list apply as at a Hello, through ``HelloAuthorizer``), and
only for a finished run it took part in (the run's ``serving.json`` lists the participants). Every request is
one batch of cut activations; the reply is the server segment's output for it, in order. Loading a model and
every forward pass run on the server's compute thread, never on the event loop. Bad input (a shape other than
the cut's, another dtype, a batch over the limit, NaN) is INVALID_ARGUMENT naming what was wrong, and ends the
call; nothing of it is kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from slperf.common.protocol.errors import WireError
from slperf.common.transport.channel import Malformed, safe_parser
from slperf.common.wire.codec import TensorLimits, decode_tensor, encode_tensor
from slperf.slserver.coordinator import RunCoordinator
from slperf.slserver.interceptors import PREDICT_METHOD, HelloAuthorizer, session_identity
from slperf.slserver.served_models import ModelUnavailable, ServedModel, ServedModels
from slperf.v1 import inference_pb2, tensor_pb2

log = logging.getLogger("slperf.server")

SERVICE = "slperf.v1.Inference"
assert PREDICT_METHOD == f"/{SERVICE}/Predict"
_LIMITS = TensorLimits(allowed=frozenset({tensor_pb2.DTYPE_FLOAT32}))


class InferenceService:
    def __init__(
        self,
        models: ServedModels,
        coordinator: RunCoordinator,
        auth: HelloAuthorizer,
        executor: concurrent.futures.Executor,
        *,
        insecure: bool,
    ):
        self.models = models
        self.coordinator = coordinator
        self.auth = auth
        self.executor = executor
        self.insecure = insecure

    async def Predict(  # noqa: N802 - the gRPC method's name
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[inference_pb2.PredictReply]:
        loop = asyncio.get_running_loop()
        served: ServedModel | None = None
        async for request in requests:
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            if served is None:
                served = await self._authorize(request, context)
            elif request.run_id and request.run_id != served.run_id:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request {request.batch} names run {request.run_id!r}; this call serves run {served.run_id}",
                )
            x = await self._activations(request, served, context)
            out = await loop.run_in_executor(self.executor, served.forward, x)
            yield inference_pb2.PredictReply(
                batch=request.batch, output=encode_tensor(out), kind=served.kind, max_batch=served.max_batch
            )

    async def _authorize(
        self, request: inference_pb2.PredictRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ServedModel:
        """The caller's id (the certificate's; the claim only with --insecure), checked like a Hello's, and the
        run's served model, which it must have taken part in."""
        ident = session_identity()
        if ident is not None and request.client_id and request.client_id != ident.name:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client id '{request.client_id}' does not match the certificate's client id '{ident.name}'",
            )
        caller = ident.name if ident is not None else request.client_id
        if not caller:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must name the caller (client_id)")
        await self.auth.client(context, caller)
        current = self.coordinator.current
        running = current.run_id if current is not None and not current.finished else None
        loop = asyncio.get_running_loop()
        try:
            served = await loop.run_in_executor(self.executor, self.models.load, request.run_id, running)
        except ModelUnavailable as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        if caller not in served.participants:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"client '{caller}' did not take part in run {served.run_id}"
            )
        log.info("client %s: inference on run %s (%s segment)", caller, served.run_id, served.kind)
        return served

    async def _activations(
        self, request: inference_pb2.PredictRequest, served: ServedModel, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        if not request.HasField("activations"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request {request.batch} has no activations")
        shape = tuple(request.activations.shape)
        if len(shape) != 1 + len(served.input_shape) or tuple(shape[1:]) != served.input_shape:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request {request.batch}: activations of shape {list(shape)}; run {served.run_id} expects "
                f"[B, {', '.join(map(str, served.input_shape))}]",
            )
        if not 1 <= shape[0] <= served.max_batch:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request {request.batch}: a batch of {shape[0]} samples; 1..{served.max_batch} are allowed",
            )
        try:
            return decode_tensor(request.activations, name="activations", limits=_LIMITS)
        except WireError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request {request.batch}: {err.message}")


def add_inference_service(server: grpc.aio.Server, service: InferenceService) -> None:
    """Registers ``Predict`` by hand, with a parser that never raises (bad bytes are INVALID_ARGUMENT, not
    INTERNAL); the interceptors guard it by its method name."""
    parse = safe_parser(inference_pb2.PredictRequest.DESCRIPTOR.full_name, inference_pb2.PredictRequest.FromString)
    handlers = {
        "Predict": grpc.stream_stream_rpc_method_handler(
            service.Predict,
            request_deserializer=parse,
            response_serializer=inference_pb2.PredictReply.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
