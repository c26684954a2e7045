"""Tracing on: the OpenTelemetry SDK's tracer provider and exporter (the ``tracing``
extra), and a stage's spans, one per message.

A stage's span for a message starts when its batch arrives (steps run fused on the
whole batch) and ends once the batch's outputs are produced. It is the child of the
span named by the envelope's ``trace_parent``; without one (nothing traced the producer,
or an older envelope) it is a root span, but of the envelope's own trace, never a new
one: the provider's id generator takes the envelope's trace id for it. A
``trace_parent`` of another trace (a client sent its own trace id at ingest) becomes a
link. Each output then names the span as its ``trace_parent``, and a dead letter too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from inferstream.envelope import Envelope
from inferstream.fused import Item
from inferstream.tracing import (
    StageSpans,
    Tracing,
    format_traceparent,
    otel_trace_id,
    parse_traceparent,
)

#: The instrumentation scope of every span inferstream makes.
SCOPE = "inferstream"
#: How long stopping waits for the last spans to be exported.
CLOSE_WAIT_S = 5.0

log = logging.getLogger(__name__)


def otlp_exporter() -> SpanExporter:
    """OTLP over HTTP (protobuf), its endpoint, headers and timeout from the environment."""
    return OTLPSpanExporter()


class EnvelopeTraceIds(RandomIdGenerator):
    """Random ids, but inside :meth:`root_of` a new root span takes the given trace id:
    the envelope's, so a stage with no parent span to follow still joins its trace."""

    def __init__(self) -> None:
        self._given: ContextVar[int] = ContextVar("inferstream_trace_id", default=0)

    @contextlib.contextmanager
    def root_of(self, trace_id: int) -> Iterator[None]:
        token = self._given.set(trace_id)
        try:
            yield
        finally:
            self._given.reset(token)

    def generate_trace_id(self) -> int:
        return self._given.get() or super().generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return not self._given.get()


class OtelTracing(Tracing):
    """Spans made with the SDK and handed to ``exporter`` in batches (``batch=False``:
    one at a time, as a test wants them)."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        service: str,
        resource: Mapping[str, str] | None = None,
        batch: bool = True,
    ) -> None:
        self.ids = EnvelopeTraceIds()
        self.provider: TracerProvider = TracerProvider(
            resource=_resource(service, resource or {}), id_generator=self.ids
        )
        processor: SpanProcessor = (
            BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        )
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer(SCOPE)

    def stage_spans(self, stage: str) -> StageSpans:
        return OtelStageSpans(self, stage)

    def flush(self) -> None:
        """Hand every finished span to the exporter now."""
        self.provider.force_flush()

    def close(self) -> None:
        """Export what is pending, waiting at most :data:`CLOSE_WAIT_S`: a collector that
        is away must not hold up a drain (the SDK's own shutdown waits 30 s, longer than
        Kubernetes' grace period); what is not sent by then is lost, spans and never scans."""
        closing = threading.Thread(target=self.provider.shutdown, name="tracing-close", daemon=True)
        closing.start()
        closing.join(CLOSE_WAIT_S)
        if closing.is_alive():
            log.warning("spans not exported within %.0f s of stopping were dropped; is the "
                        "OTLP endpoint reachable?", CLOSE_WAIT_S)  # fmt: skip


def _resource(service: str, attributes: Mapping[str, str]) -> Resource:
    """The environment's resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``),
    ``service`` as its name when the environment names none."""
    found = Resource.create(dict(attributes))
    if str(found.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        found = found.merge(Resource({SERVICE_NAME: service}))
    return found


class OtelStageSpans(StageSpans):
    """One span per message a stage worker handles (``stage <name>``, a consumer span)."""

    def __init__(self, tracing: OtelTracing, stage: str) -> None:
        # Only what differs from message to message is on the span (each attribute costs
        # about 3 µs a span): the stage is in the span's name, the pipeline and the
        # stage in a worker process's resource.
        self._tracer = tracing.tracer
        self._ids = tracing.ids
        self._name = f"stage {stage}"
        self._started_ns = 0
        self._open: list[tuple[trace.Span, Item]] = []

    def begin(self) -> None:
        self._started_ns = time.time_ns()

    def open(self, items: Sequence[Item], dead: Sequence[Item]) -> None:
        self.abandon("the batch before was never produced")  # none, unless it was abandoned
        started = self._started_ns or time.time_ns()
        seen: set[int] = set()
        for item in (*items, *dead):
            if item.envelope is None or id(item) in seen:
                continue  # unparseable: no trace to join
            seen.add(id(item))
            span = self._start(item, item.envelope, started)
            parent = format_traceparent(span.get_span_context())
            for env in item.outputs:
                env.trace_parent = parent
            if item.error is not None:
                item.envelope.trace_parent = parent  # its dead letter is a copy
            self._open.append((span, item))

    def _start(self, item: Item, env: Envelope, started: int) -> trace.Span:
        attributes: dict[str, str | int] = {
            "inferstream.envelope.id": item.input_id,
            "inferstream.root_id": env.root_id,
            "inferstream.tenant": env.tenant,
            "messaging.destination.name": item.message.topic,
            "inferstream.partition": item.message.partition,
            "inferstream.offset": item.message.offset,
        }
        trace_id = otel_trace_id(env.trace_id, env.root_id or env.id)
        parent = parse_traceparent(env.trace_parent)
        kind = trace.SpanKind.CONSUMER
        if parent is not None and parent.trace_id == trace_id:
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
            return self._tracer.start_span(
                self._name, context, kind=kind, attributes=attributes, start_time=started
            )
        links = [trace.Link(parent)] if parent is not None else None
        with self._ids.root_of(trace_id):
            return self._tracer.start_span(
                self._name, Context(), kind=kind, attributes=attributes, links=links,
                start_time=started,
            )  # fmt: skip

    def close(self) -> None:
        ended = time.time_ns()
        for span, item in self._open:
            if item.attempts > 1:
                span.set_attribute("inferstream.attempts", item.attempts)
            if len(item.outputs) != 1:  # a fan-out, or none
                span.set_attribute("inferstream.outputs", len(item.outputs))
            if item.error is None:
                span.set_attribute("inferstream.outcome", "ok")
            else:
                span.set_attribute("inferstream.outcome", "dead-letter")
                span.set_attribute("error.type", type(item.error).__name__)
                span.set_status(trace.StatusCode.ERROR, str(item.error)[:500])
            span.end(ended)
        self._open.clear()
        self._started_ns = 0

    def abandon(self, reason: str) -> None:
        for span, _ in self._open:
            span.set_attribute("inferstream.outcome", "error")
            span.set_status(trace.StatusCode.ERROR, reason)
            span.end()
        self._open.clear()
