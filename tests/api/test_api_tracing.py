"""Tracing in one process: scans ingested over the API and run through the flagship's
stages make one trace each, from the request through every stage to the store, caught
by the SDK's in-memory exporter; ``GET`` of the scan and of its record shows it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
from api_testing import World, start_world
from egg_scans import egg_envelopes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from inferstream.api import ApiSettings
from inferstream.envelope import new_id
from inferstream.testing import pipeline_threads
from inferstream.tracing_otel import OtelTracing

VIEWER = "http://jaeger.example:16686/trace/{trace_id}"


@pytest.fixture
def traced() -> Iterator[tuple[OtelTracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = OtelTracing(exporter, service="inferstream-test", batch=False)
    yield tracing, exporter
    tracing.close()


@pytest.fixture
def traced_world(
    settings: ApiSettings, traced: tuple[OtelTracing, InMemorySpanExporter]
) -> Iterator[World]:
    yield from start_world(dataclasses.replace(settings, trace_url=VIEWER), traced[0])


def _send(world: World, dicom: bytes, headers: dict[str, str] | None = None) -> str:
    answer = world.client.post(
        "/v1/scans",
        content=dicom,
        headers={**world.headers(world.own, "device"), "Content-Type": "application/dicom",
                 **(headers or {})},
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    (scan_id,) = answer.json()["ids"]
    return str(scan_id)


def _processed(world: World, scan_id: str) -> dict[str, Any]:
    """The scan once the pipeline stored it (a generous bound, not a speed check)."""
    headers = world.headers(world.own, "viewer")
    deadline = time.monotonic() + 120
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = world.client.get(f"/v1/scans/{scan_id}", headers=headers).json()
        if body["status"] == "processed":
            return body
        time.sleep(0.1)
    raise AssertionError(f"scan {scan_id} stayed {body.get('status')!r}")


def _in_trace(found: tuple[ReadableSpan, ...], trace_id: str) -> list[ReadableSpan]:
    return [s for s in found if s.context is not None and f"{s.context.trace_id:032x}" == trace_id]


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    named = [s for s in spans if s.name == name]
    assert len(named) == 1, f"{len(named)} spans named {name!r}: {[s.name for s in spans]}"
    return named[0]


def _parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def test_one_trace_per_scan_from_the_request_through_every_stage(
    traced_world: World, traced: tuple[OtelTracing, InMemorySpanExporter]
) -> None:
    world, (tracing, exporter) = traced_world, traced
    caller_trace, caller_span = new_id(), "ab" * 8
    first, second = (scan.payload.inline for scan in egg_envelopes(2, seed=31))
    continued = _send(world, first, {"traceparent": f"00-{caller_trace}-{caller_span}-01"})
    fresh = _send(world, second)
    spec = world.client.app.state.services.settings.pipeline  # type: ignore[attr-defined]
    with pipeline_threads(spec, replicas=1, tracing=tracing):
        bodies = {scan_id: _processed(world, scan_id) for scan_id in (continued, fresh)}
    assert bodies[continued]["trace_id"] == caller_trace  # the caller's trace, continued
    assert bodies[fresh]["trace_id"] != caller_trace
    found = exporter.get_finished_spans()
    for scan_id, body in bodies.items():
        trace_id = body["trace_id"]
        assert body["trace_url"] == VIEWER.format(trace_id=trace_id)
        spans = _in_trace(found, trace_id)
        request = _one(spans, "POST /v1/scans")
        classify, store = _one(spans, "stage classify"), _one(spans, "stage store")
        assert request.kind is SpanKind.SERVER
        assert request.attributes is not None and request.attributes["http.route"] == "/v1/scans"
        assert _parent_of(request) == (int(caller_span, 16) if scan_id == continued else None)
        # ingest -> classify -> store, each the child of the one before, across a topic
        assert _parent_of(classify) == _span_id(request)
        assert _parent_of(store) == _span_id(classify)
        assert (
            classify.attributes is not None
            and classify.attributes["inferstream.root_id"] == scan_id
        )
        assert store.attributes is not None and store.attributes["inferstream.outcome"] == "ok"
        record = body["result"]["id"]
        answer = world.client.get(
            f"/v1/apps/eggs/records/{record}", headers=world.headers(world.own, "viewer")
        ).json()
        assert answer["record"]["trace_id"] == trace_id
        assert answer["trace_url"] == VIEWER.format(trace_id=trace_id)


def test_probes_are_not_traced_and_an_untraced_api_links_no_trace(
    traced_world: World, traced: tuple[OtelTracing, InMemorySpanExporter], settings: ApiSettings
) -> None:
    world, (_, exporter) = traced_world, traced
    assert world.client.get("/healthz").status_code == 200
    assert world.client.get("/v1/whoami", headers=world.headers(world.own, "viewer")).is_success
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["GET /v1/whoami"]
    for plain in start_world(settings):  # no tracing, no trace URL: ids only
        scan_id = _send(plain, egg_envelopes(1, seed=32)[0].payload.inline, {
            "traceparent": f"00-{new_id()}-{'ab' * 8}-01"})  # fmt: skip
        body = plain.client.get(
            f"/v1/scans/{scan_id}", headers=plain.headers(plain.own, "viewer")
        ).json()
        assert len(body["trace_id"]) == 32 and body["trace_url"] is None
    assert len(exporter.get_finished_spans()) == 1  # the untraced API made none
