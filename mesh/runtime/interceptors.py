"""Server interceptor: tracing, authentication and error mapping for every RPC."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from mesh.runtime.errors import HinError
from mesh.runtime.identity import Authenticator
from mesh.runtime.principal import (
    ANONYMOUS,
    Principal,
    current_principal,
    reset_principal,
    set_principal,
)
from mesh.runtime.telemetry import current_trace_id

logger = logging.getLogger(__name__)

#: Methods that any caller may reach without credentials.
PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


@dataclass(frozen=True)
class CallOutcome:
    """Outcome of one RPC, passed to the ``on_finish`` hook before the response."""

    method: str
    principal: Principal
    code: grpc.StatusCode
    #: ErrorInfo reason of a HinError, such as "TOKEN_EXPIRED"; else "".
    reason: str
    trace_id: str


#: Awaited before each RPC's status is sent, so a durable write it makes
#: (an audit record) is done before the caller sees the response.
FinishHook = Callable[[CallOutcome], Awaitable[None]]


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wrap each RPC in a server span, set the principal, and map errors.

    The order inside one call is: extract the trace context from metadata and
    open the span, authenticate, run the handler, then turn a HinError into
    its status code with google.rpc.Status details. Any other exception is
    logged with the trace id and returned as INTERNAL without internals.
    """

    def __init__(
        self,
        *,
        service: str,
        authenticator: Authenticator,
        tracer_provider: trace.TracerProvider,
        on_finish: FinishHook | None = None,
    ) -> None:
        self._service = service
        self._authenticator = authenticator
        self._tracer = tracer_provider.get_tracer("mesh.runtime.server")
        self._on_finish = on_finish

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Client-streaming methods are not used in HIN's contracts.
        return handler

    def _wrap_unary(
        self, method: str, behavior: Callable[..., Any]
    ) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._enter(method, context) as scope:
                try:
                    scope.raise_pending()
                    response = await behavior(request, context)
                except BaseException as exc:  # noqa: BLE001 - mapped below
                    await scope.fail(exc, context)
                    raise
                scope.succeed()
                await scope.report()
                return response

        return call

    def _wrap_stream(
        self, method: str, behavior: Callable[..., Any]
    ) -> Callable[..., Any]:
        async def call(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            with self._enter(method, context) as scope:
                try:
                    scope.raise_pending()
                    async for message in behavior(request, context):
                        yield message
                except BaseException as exc:  # noqa: BLE001 - mapped below
                    await scope.fail(exc, context)
                    raise
                scope.succeed()
                await scope.report()

        return call

    def _enter(self, method: str, context: grpc.aio.ServicerContext) -> _CallScope:
        return _CallScope(self, method, context)


class _CallScope:
    """Span, principal and timing of one call."""

    def __init__(
        self,
        interceptor: ServerInterceptor,
        method: str,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self._interceptor = interceptor
        self._method = method
        self._context = context
        self._code = grpc.StatusCode.OK
        self._done = False

    def __enter__(self) -> _CallScope:
        metadata = {
            key: value
            for key, value in (self._context.invocation_metadata() or ())
            if isinstance(value, str)
        }
        self._otel_token = otel_context.attach(propagate.extract(metadata))
        service_name, _, rpc_method = self._method.lstrip("/").partition("/")
        self._span = self._interceptor._tracer.start_span(
            self._method.lstrip("/"),
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service_name,
                "rpc.method": rpc_method,
            },
        )
        self._span_token = otel_context.attach(trace.set_span_in_context(self._span))
        self._started = time.perf_counter()
        self._principal_token = None
        try:
            principal = self._interceptor._authenticator.authenticate(metadata)
        except HinError as exc:
            self._pending_error: HinError | None = exc
        else:
            self._pending_error = None
            self._principal_token = set_principal(principal)
            self._span.set_attribute("enduser.id", principal.subject)
        return self

    def raise_pending(self) -> None:
        if self._pending_error is not None:
            raise self._pending_error

    def succeed(self) -> None:
        self._code = grpc.StatusCode.OK

    async def report(self, reason: str = "") -> None:
        """Await the interceptor's on_finish hook with this call's outcome."""
        hook = self._interceptor._on_finish
        if hook is None:
            return
        principal = (
            current_principal() if self._principal_token is not None else ANONYMOUS
        )
        await hook(
            CallOutcome(
                method=self._method,
                principal=principal,
                code=self._code,
                reason=reason,
                trace_id=current_trace_id(),
            )
        )

    async def fail(self, exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self._code = grpc.StatusCode.CANCELLED
            return
        if isinstance(exc, grpc.aio.AbortError):
            self._code = context.code() or grpc.StatusCode.UNKNOWN
            await self.report()
            return
        if isinstance(exc, HinError):
            self._code = exc.code
            await self.report(exc.reason)
            status = exc.to_status()
            await context.abort(
                exc.code,
                exc.message,
                trailing_metadata=(
                    ("grpc-status-details-bin", status.SerializeToString()),
                ),
            )
        self._code = grpc.StatusCode.INTERNAL
        await self.report()
        trace_id = current_trace_id()
        logger.exception(
            "unhandled error in RPC",
            extra={"rpc_method": self._method, "trace_id": trace_id},
        )
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error; quote trace id {trace_id} when reporting it",
        )

    def __exit__(self, *exc_info: Any) -> None:
        elapsed_ms = (time.perf_counter() - self._started) * 1000
        self._span.set_attribute("rpc.grpc.status_code", self._code.value[0])
        if self._code not in (grpc.StatusCode.OK,):
            self._span.set_status(Status(StatusCode.ERROR, self._code.name))
        logger.info(
            "rpc finished",
            extra={
                "rpc_method": self._method,
                "grpc_code": self._code.name,
                "duration_ms": round(elapsed_ms, 2),
            },
        )
        self._span.end()
        if self._principal_token is not None:
            reset_principal(self._principal_token)
        otel_context.detach(self._span_token)
        otel_context.detach(self._otel_token)
