"""Traces of the gateway's work, without patient text: OpenTelemetry spans over OTLP/HTTP.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
Off, the SDK is never imported and `span` hands back one shared do-nothing object: the
cost is a global read per call. On, the SDK reads its standard variables itself
(`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, headers, timeouts).

What a span may carry is fixed here (`ATTRIBUTES`): ids, sizes, counts, models and
outcomes. A name outside that list raises, so a span cannot be given a message, a
transcript, a prompt or a token by accident; exceptions are recorded by type only.

Across processes the context travels in the broker envelope as 25 bytes (trace id, span
id, flags: `wire_context` / `span(parent=from_wire(...))`).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

log = logging.getLogger(__name__)

AttributeValue = str | int | float | bool

# Keyword name -> attribute key. Values are ids, sizes, counts, models, outcomes.
ATTRIBUTES: dict[str, str] = {
    "role": "painar.role",
    "patient_id": "painar.patient_id",
    "thread_id": "painar.thread_id",
    "response_id": "painar.response_id",
    "frame_type": "painar.frame_type",
    "frames": "painar.frames",
    "listeners": "painar.listeners",
    "mutations": "painar.mutations",
    "changes": "painar.changes",
    "rejected": "painar.rejected",
    "version": "painar.version",
    "memories": "painar.memories",
    "memory_graph": "painar.memory_graph",
    "what": "painar.what",
    "tokens": "painar.tokens",
    "bytes": "painar.bytes",
    "audio_seconds": "painar.audio_seconds",
    "attempts": "painar.attempts",
    "model": "painar.model",
    "finish_reason": "painar.finish_reason",
    "outcome": "painar.outcome",
}

_WIRE = struct.Struct(">16s8sB")  # trace id, span id, trace flags
WIRE_SIZE = _WIRE.size


class Span(Protocol):
    def set(self, **attributes: AttributeValue) -> None: ...

    def end(self, **attributes: AttributeValue) -> None:
        """End a span made by `begin` (a `span` ends with its block)."""


class _Off:
    """The span of a process without tracing: does nothing, carries nothing."""

    def set(self, **attributes: AttributeValue) -> None:
        pass

    def end(self, **attributes: AttributeValue) -> None:
        pass

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


OFF = _Off()
_tracer: Any = None  # opentelemetry.trace.Tracer when on
_provider: Any = None  # its TracerProvider


def enabled() -> bool:
    return _tracer is not None


def configure(service_version: str) -> bool:
    """Start exporting spans when an OTLP endpoint is configured; returns whether it did."""
    global _tracer, _provider
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES.
    name = os.environ.get("OTEL_SERVICE_NAME") or "painar-gateway"
    resource = Resource.create({SERVICE_NAME: name, SERVICE_VERSION: service_version})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer, _provider = provider.get_tracer("painar-gateway"), provider
    log.info("traces enabled")
    return True


def shutdown() -> None:
    """Send what is buffered and stop (at exit)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def attributes_of(values: dict[str, AttributeValue]) -> dict[str, AttributeValue]:
    try:
        return {ATTRIBUTES[name]: value for name, value in values.items()}
    except KeyError as exc:
        raise ValueError(f"span attribute {exc} is not in gateway.tracing.ATTRIBUTES") from None


class _On:
    def __init__(self, span: Any) -> None:
        self.span = span

    def set(self, **attributes: AttributeValue) -> None:
        self.span.set_attributes(attributes_of(attributes))

    def end(self, **attributes: AttributeValue) -> None:
        if not self.span.is_recording():
            return  # ended already
        if attributes:
            self.set(**attributes)
        self.span.end()


def _parent(parent: object) -> Any:
    from opentelemetry import trace

    if isinstance(parent, _On):
        return trace.set_span_in_context(parent.span)
    return parent  # a context from `from_wire`, or None: the current one


@contextmanager
def _span(name: str, parent: object, attributes: dict[str, AttributeValue]) -> Iterator[Span]:
    from opentelemetry.trace import Status, StatusCode

    with _tracer.start_as_current_span(
        name,
        context=_parent(parent),
        attributes=attributes_of(attributes),
        record_exception=False,  # an exception's message may quote patient text
        set_status_on_exception=False,
    ) as current:
        try:
            yield _On(current)
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def span(
    name: str, parent: object = None, **attributes: AttributeValue
) -> AbstractContextManager[Span]:
    """A span around a block (`with span("sync.write", mutations=3) as s:`), a child of
    the current span, or of `parent` (a `begin` span or a `from_wire` context)."""
    if _tracer is None:
        return OFF
    return _span(name, parent, attributes)


def begin(name: str, parent: object = None, **attributes: AttributeValue) -> Span:
    """A span that outlives a block; end it with `.end()`. Not made current."""
    if _tracer is None:
        return OFF
    return _On(
        _tracer.start_span(name, context=_parent(parent), attributes=attributes_of(attributes))
    )


def wire_context() -> bytes:
    """The current span's context for the broker envelope; empty when there is none."""
    if _tracer is None:
        return b""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return b""
    return _WIRE.pack(
        context.trace_id.to_bytes(16, "big"),
        context.span_id.to_bytes(8, "big"),
        int(context.trace_flags),
    )


def from_wire(data: bytes) -> object:
    """A parent for `span` from `wire_context`'s bytes (None when tracing is off)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    trace_id, span_id, flags = _WIRE.unpack(data)
    remote = trace.SpanContext(
        int.from_bytes(trace_id, "big"),
        int.from_bytes(span_id, "big"),
        is_remote=True,
        trace_flags=trace.TraceFlags(flags),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(remote))
