"""Outgoing gRPC channels with client spans and W3C trace context."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode


class TracingClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """Open a CLIENT span per call and send its context in the metadata."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer("mesh.runtime.channels")

    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        with self._span(client_call_details) as (span, details):
            call = await continuation(details, request)
            code = await call.code()
            _finish(span, code)
            return call

    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        # A stream may outlive this coroutine, so the span covers the start of
        # the call only; the server span carries the stream's duration.
        with self._span(client_call_details) as (_span, details):
            return await continuation(details, request)

    def _span(self, details: grpc.aio.ClientCallDetails) -> _SpanScope:
        return _SpanScope(self._tracer, details)


class _SpanScope:
    def __init__(self, tracer: trace.Tracer, details: grpc.aio.ClientCallDetails):
        self._tracer = tracer
        self._details = details

    def __enter__(self) -> tuple[trace.Span, grpc.aio.ClientCallDetails]:
        method = _method_name(self._details.method)
        service, _, rpc = method.partition("/")
        self._manager = self._tracer.start_as_current_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": rpc,
            },
            end_on_exit=True,
        )
        span = self._manager.__enter__()
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata = list(self._details.metadata or ())
        metadata.extend(carrier.items())
        details = grpc.aio.ClientCallDetails(
            method=self._details.method,
            timeout=self._details.timeout,
            metadata=grpc.aio.Metadata(*metadata),
            credentials=self._details.credentials,
            wait_for_ready=self._details.wait_for_ready,
        )
        return span, details

    def __exit__(self, *exc_info: Any) -> None:
        self._manager.__exit__(*exc_info)


def _method_name(method: str | bytes) -> str:
    text = method.decode() if isinstance(method, bytes) else method
    return text.lstrip("/")


def _finish(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))


def insecure_channel(
    address: str,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """Dial ``address`` in plaintext (loopback or the local sidecar) with tracing."""
    return grpc.aio.insecure_channel(
        address,
        options=list(options),
        interceptors=[TracingClientInterceptor(tracer_provider)],
    )
