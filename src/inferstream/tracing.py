"""Tracing with OpenTelemetry: a span per API request and per message a stage handles,
one trace per ingested item across processes and topics.

This module is what every process has: the trace-id rules, and tracing switched off
(:data:`NO_TRACING`), where the SDK is never imported, FastAPI makes no span and a stage
pays three empty method calls per batch. :mod:`inferstream.tracing_config` turns it on from
the standard environment; :mod:`inferstream.tracing_otel` (the ``tracing`` extra) makes
the spans and exports them.

How spans join. An envelope's ``trace_id`` is its trace's id, and ``trace_parent`` the
W3C traceparent of the span that made it: the API request at ingest, a stage's span
after that. The next stage's span is that span's child, so one item's trace runs from
the request through every stage to the store, whichever processes ran them. A
``trace_id`` that is not 32 hex digits (envelopes from before, a client's own ids) is
hashed to one (:func:`otel_trace_id`), the same in every process, so its spans join too.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace

from inferstream.envelope import Envelope
from inferstream.errors import ConfigError

if TYPE_CHECKING:
    from inferstream.fused import Item

#: Where ``GET`` of a record links its trace: a URL with ``{trace_id}`` in it.
TRACE_URL_ENV = "INFERSTREAM_TRACE_URL"

_TRACE_HEX = re.compile(r"[0-9a-f]{32}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def otel_trace_id(trace_id: str, fallback: str = "") -> int:
    """The OpenTelemetry trace id of an envelope's ``trace_id``: the number it spells
    when it is 32 lowercase hex digits (not all zero), else a 128-bit BLAKE2b hash of it,
    or of ``fallback`` (say the root id) when it is empty."""
    if _TRACE_HEX.fullmatch(trace_id) and trace_id.strip("0"):
        return int(trace_id, 16)
    digest = hashlib.blake2b((trace_id or fallback).encode(), digest_size=16).digest()
    return int.from_bytes(digest, "big") or 1


def trace_hex(trace_id: str) -> str:
    """The trace id a trace viewer knows ``trace_id`` by (32 lowercase hex digits)."""
    return f"{otel_trace_id(trace_id):032x}"


def format_traceparent(context: trace.SpanContext) -> str:
    """The W3C ``traceparent`` of a span."""
    flags = int(context.trace_flags)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"


def parse_traceparent(value: str) -> trace.SpanContext | None:
    """The remote span a W3C ``traceparent`` names; None when it names none."""
    found = _TRACEPARENT.fullmatch(value)
    if found is None:
        return None
    context = trace.SpanContext(
        trace_id=int(found[1], 16),
        span_id=int(found[2], 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(found[3], 16)),
    )
    return context if context.is_valid else None


def stamp_ingest(env: Envelope, given_trace_id: str = "") -> None:
    """At ingest: ``env`` joins the trace of the request being served (the current span),
    or keeps ``given_trace_id``, a client's own; the request's span is its parent. With
    tracing off there is no current span, and ``env`` keeps the id it was made with."""
    context = trace.get_current_span().get_span_context()
    if given_trace_id:
        env.trace_id = given_trace_id
    elif context.is_valid:
        env.trace_id = f"{context.trace_id:032x}"
    if context.is_valid:
        env.trace_parent = format_traceparent(context)


def current_trace_hex() -> str | None:
    """The trace id of the span being served, for log lines; None when there is none."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def check_trace_url(template: str) -> str:
    """``template`` when it is a URL naming ``{trace_id}`` and nothing else in braces."""
    if not template:
        return template
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"trace URL {template!r} is not a valid template: {exc}") from exc
    if fields != {"trace_id"} or not template.startswith(("http://", "https://")):
        raise ConfigError(
            f"trace URL {template!r} must be an http(s) URL with {{trace_id}} where the "
            "trace id goes, e.g. http://jaeger:16686/trace/{trace_id}"
        )
    return template


def trace_link(template: str, trace_id: str) -> str | None:
    """The trace viewer's page of ``trace_id``; None without a template or a trace id."""
    if not template or not trace_id:
        return None
    return template.format(trace_id=trace_hex(trace_id))


class StageSpans:
    """A stage's spans, one per message of each batch; this base makes none.

    The worker calls :meth:`begin` when a batch arrives, :meth:`open` once every item
    of it has its outputs or its error (before they are serialized: the outputs get
    their ``trace_parent`` there), :meth:`close` once they are produced, and
    :meth:`abandon` when the batch is left uncommitted.
    """

    def begin(self) -> None:
        """A batch arrived."""

    def open(self, items: Sequence[Item], dead: Sequence[Item]) -> None:
        """A span for each item of the batch, the outputs' ``trace_parent`` set."""

    def close(self) -> None:
        """The batch's outputs and dead letters are produced: end its spans."""

    def abandon(self, reason: str) -> None:
        """The batch is left for redelivery: end its spans as failed with ``reason``."""


class Tracing:
    """What a process traces with; this base, tracing off, traces nothing and costs
    nothing (:data:`NO_TRACING`)."""

    #: What makes the API's spans (FastAPI's own, one per request); None: no spans.
    provider: trace.TracerProvider | None = None

    def stage_spans(self, stage: str) -> StageSpans:
        """The spans of one worker of ``stage``."""
        return StageSpans()

    def close(self) -> None:
        """Export what is pending and stop."""


NO_TRACING = Tracing()
