"""Tracing: the trace-id rules, the configuration from the standard environment, and a
stage worker's spans on the real embedded bus, caught by the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flow_testing import drain_topic, produce_envelopes, running, wait_for
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from inferstream.builtin_steps import FailIf, Passthrough
from inferstream.bus import Bus, Message, open_bus
from inferstream.envelope import Envelope, new_envelope, new_id, parse
from inferstream.errors import ConfigError
from inferstream.fused import Item
from inferstream.routing import Router
from inferstream.tracing import (
    NO_TRACING,
    Tracing,
    check_trace_url,
    format_traceparent,
    otel_trace_id,
    parse_traceparent,
    trace_link,
)
from inferstream.tracing_config import open_tracing
from inferstream.tracing_otel import OtelTracing
from inferstream.worker import StageWorker

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def test_a_new_trace_id_is_its_own_otel_trace_id() -> None:
    ident = new_id()
    assert otel_trace_id(ident) == int(ident, 16)


def test_other_trace_ids_are_hashed_the_same_way_every_time() -> None:
    legacy = otel_trace_id("scanner-7/trace:42")
    assert legacy == otel_trace_id("scanner-7/trace:42") and 0 < legacy < 2**128
    assert legacy != otel_trace_id("scanner-7/trace:43")
    upper = "ABCDEF0123456789ABCDEF0123456789"  # W3C trace ids are lowercase
    assert otel_trace_id(upper) != int(upper, 16)
    assert otel_trace_id("0" * 32) != 0  # the invalid all-zero id
    assert otel_trace_id("", "root-1") == otel_trace_id("root-1")


def test_a_traceparent_round_trips_and_nonsense_names_no_span() -> None:
    text = f"00-{new_id()}-{'ab' * 8}-01"
    context = parse_traceparent(text)
    assert context is not None and context.is_remote and context.trace_flags.sampled
    assert format_traceparent(context) == text
    for nonsense in ("", "00-xyz", f"00-{'0' * 32}-{'ab' * 8}-01", f"ff-{new_id()}-{'ab' * 8}-01"):
        assert parse_traceparent(nonsense) is None


def test_trace_url_templates() -> None:
    template = "http://jaeger:16686/trace/{trace_id}"
    ident = new_id()
    assert check_trace_url(template) == template
    assert trace_link(template, ident) == f"http://jaeger:16686/trace/{ident}"
    assert trace_link(template, "old") == f"http://jaeger:16686/trace/{otel_trace_id('old'):032x}"
    assert trace_link("", ident) is None and trace_link(template, "") is None
    for wrong in ("http://jaeger/trace", "http://x/{trace_id}/{span}", "jaeger/{trace_id}"):
        with pytest.raises(ConfigError, match="trace_id"):
            check_trace_url(wrong)


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OpenTelemetry variable from outside the test."""
    for name in (*ENDPOINT_ENVS, "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME",
                 "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                 "OTEL_RESOURCE_ATTRIBUTES"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_tracing_is_off_without_an_endpoint(otel_env: pytest.MonkeyPatch) -> None:
    assert open_tracing("inferstream-worker") is NO_TRACING
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert open_tracing("inferstream-worker") is NO_TRACING
    otel_env.delenv("OTEL_SDK_DISABLED")
    otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert open_tracing("inferstream-worker") is NO_TRACING


@pytest.mark.parametrize("variable", ENDPOINT_ENVS)
def test_an_endpoint_turns_it_on_named_by_the_environment_or_the_role(
    otel_env: pytest.MonkeyPatch, variable: str
) -> None:
    otel_env.setenv(variable, "http://127.0.0.1:4318/v1/traces")
    tracing = open_tracing("inferstream-worker", {"inferstream.stage": "classify"})
    try:
        assert isinstance(tracing, OtelTracing)
        resource = tracing.provider.resource.attributes
        assert resource["service.name"] == "inferstream-worker"
        assert resource["inferstream.stage"] == "classify"
    finally:
        tracing.close()
    otel_env.setenv("OTEL_SERVICE_NAME", "eggs-classify")
    tracing = open_tracing("inferstream-worker")
    try:
        assert isinstance(tracing, OtelTracing)
        assert tracing.provider.resource.attributes["service.name"] == "eggs-classify"
    finally:
        tracing.close()


def test_what_it_cannot_export_to_is_refused_with_what_to_set(
    otel_env: pytest.MonkeyPatch,
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="http/protobuf"):
        open_tracing("inferstream-api")
    otel_env.delenv("OTEL_EXPORTER_OTLP_PROTOCOL")
    otel_env.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="OTLP only"):
        open_tracing("inferstream-api")


@pytest.fixture
def spans() -> Iterator[tuple[OtelTracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = OtelTracing(exporter, service="test", batch=False)
    yield tracing, exporter
    tracing.close()


@pytest.fixture
def chain_bus(tmp_path: Path) -> Iterator[Bus]:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    for topic in ("in", "in.dlq", "mid", "out"):
        bus.create_topic(topic, 2)
    yield bus
    bus.close()


def _stage(bus: Bus, name: str, source: str, sink: str, tracing: Tracing) -> StageWorker:
    steps = [FailIf("bad", "yes", permanent=True), Passthrough()]
    return StageWorker(
        bus, pipeline="t", stage=name, inputs=[source], router=Router(outputs=(sink,)),
        steps=steps, max_batch=16, max_wait_s=0.01, tracing=tracing,
    )  # fmt: skip


def _scan(key: str, **attributes: str) -> Envelope:
    return new_envelope(b"x", "text/plain", key=key, attributes=attributes)


def _by_root(found: tuple[ReadableSpan, ...], name: str) -> dict[str, ReadableSpan]:
    chosen = [s for s in found if s.name == name]
    by_root = {str(s.attributes["inferstream.root_id"]): s for s in chosen}  # type: ignore[index]
    assert len(by_root) == len(chosen), f"{name}: more than one span for a message"
    return by_root


def test_stage_spans_join_across_the_topic_between_two_stages(
    chain_bus: Bus, spans: tuple[OtelTracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    producer = tracing.tracer.start_span("produce")
    producer.end()
    made_by = producer.get_span_context()
    traced = _scan("a")
    traced.trace_id, traced.trace_parent = f"{made_by.trace_id:032x}", format_traceparent(made_by)
    legacy = _scan("b")
    legacy.trace_id = "legacy-trace-7"  # from before trace ids were W3C's
    foreign = _scan("c")  # a client's own trace id, the request's span in another trace
    foreign.trace_parent = format_traceparent(made_by)
    refused = _scan("d", bad="yes")
    inputs = [traced, legacy, foreign, refused]
    produce_envelopes(chain_bus, "in", inputs)
    first, second = (_stage(chain_bus, "s1", "in", "mid", tracing),
                     _stage(chain_bus, "s2", "mid", "out", tracing))  # fmt: skip
    with running(first, second):
        assert wait_for(lambda: sum(p.high for p in chain_bus.partitions("out")) >= 3)
        assert wait_for(lambda: len(exporter.get_finished_spans()) >= 1 + 4 + 3)
    out = [parse(m.value) for m in drain_topic(chain_bus, "out", 3)]
    [letter] = [parse(m.value) for m in drain_topic(chain_bus, "in.dlq", 1)]
    found = exporter.get_finished_spans()
    s1, s2 = _by_root(found, "stage s1"), _by_root(found, "stage s2")
    assert sorted(s1) == sorted(e.id for e in inputs)
    assert sorted(s2) == sorted(e.id for e in (traced, legacy, foreign))

    # Each message's first span continues its envelope's trace, the second is its child.
    one = s1[traced.id]
    assert one.parent is not None and one.parent.span_id == made_by.span_id
    assert one.context is not None and one.context.trace_id == made_by.trace_id
    old = s1[legacy.id]
    assert old.parent is None and old.context is not None
    assert old.context.trace_id == otel_trace_id("legacy-trace-7")
    own = s1[foreign.id]
    assert own.parent is None and own.context is not None
    assert own.context.trace_id == int(foreign.trace_id, 16)
    assert [link.context.span_id for link in own.links] == [made_by.span_id]
    for root, span in s2.items():
        assert span.parent is not None and s1[root].context is not None
        assert span.parent.span_id == s1[root].context.span_id
        assert span.context is not None and span.context.trace_id == s1[root].context.trace_id

    # The outputs name the span that made them; the dead letter its failing span.
    for env in out:
        made = s2[env.root_id].context
        assert made is not None and env.trace_parent == format_traceparent(made)
    failed = s1[refused.id]
    assert failed.context is not None and letter.trace_parent == format_traceparent(failed.context)
    assert failed.status.status_code is StatusCode.ERROR
    assert (
        failed.attributes is not None and failed.attributes["inferstream.outcome"] == "dead-letter"
    )
    assert failed.attributes["error.type"] == "InvalidInput"
    assert one.attributes is not None and one.attributes["inferstream.outcome"] == "ok"
    assert one.kind is SpanKind.CONSUMER
    assert one.attributes["messaging.destination.name"] == "in"
    assert one.attributes["inferstream.tenant"] == "default"


def test_with_tracing_off_envelopes_pass_their_trace_on_untouched(chain_bus: Bus) -> None:
    parent = f"00-{new_id()}-{'cd' * 8}-01"
    scan = _scan("a")
    scan.trace_parent = parent
    produce_envelopes(chain_bus, "in", [scan])
    with running(_stage(chain_bus, "s1", "in", "mid", NO_TRACING)):
        [message] = drain_topic(chain_bus, "mid", 1)
    out = parse(message.value)
    assert (out.trace_id, out.trace_parent) == (scan.trace_id, parent)


def test_a_batch_left_for_redelivery_ends_its_spans_as_failed(
    spans: tuple[OtelTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    stage = tracing.stage_spans("s1")
    scan = _scan("a")
    item = Item(Message("in", 0, 7, b"a", scan.SerializeToString(), 0), scan, scan.id)
    item.outputs = [_scan("a")]
    stage.begin()
    stage.open([item], [])
    assert item.outputs[0].trace_parent  # set before the outputs are produced
    stage.abandon("stopped during an outage; the batch will be redelivered")
    stage.close()  # nothing left open: no second end
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["inferstream.outcome"] == "error"
    assert span.attributes["inferstream.offset"] == 7
