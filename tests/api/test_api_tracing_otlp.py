"""Tracing across processes: ``inferstream serve`` and two ``inferstream worker`` processes
export their spans over OTLP/HTTP to a receiver this test runs, and every scan's trace
arrives whole, its spans from the API and from both stages joined by its trace id."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from api_testing import JWT_SECRET
from broker_testing import free_port
from egg_scans import egg_envelopes
from flow_testing import wait_for
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from inferstream.apps.eggs import APP
from inferstream.cli import main

SCANS = 8
VIEWER = "http://tempo.example/trace/{trace_id}"


@dataclass(frozen=True)
class Received:
    service: str
    stage: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class OtlpReceiver:
    """A collector's OTLP/HTTP trace endpoint: ``POST /v1/traces`` with a protobuf
    ``ExportTraceServiceRequest``; every span kept, with its process's resource."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.keep(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def keep(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = _values(resource_spans.resource.attributes)
            for scope in resource_spans.scope_spans:
                received = [
                    Received(
                        service=str(resource.get("service.name")),
                        stage=str(resource.get("inferstream.stage", "")),
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        attributes=_values(span.attributes),
                    )
                    for span in scope.spans
                ]
                with self.lock:
                    self.spans += received

    def by_trace(self) -> dict[str, list[Received]]:
        with self.lock:
            spans = list(self.spans)
        traces: dict[str, list[Received]] = defaultdict(list)
        for span in spans:
            traces[span.trace_id].append(span)
        return traces


def _values(attributes: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in attributes}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    collector = OtlpReceiver()
    thread = threading.Thread(target=collector.server.serve_forever, daemon=True)
    thread.start()
    yield collector
    collector.server.shutdown()
    collector.server.server_close()


def _urls(tmp_path: Path) -> list[str]:
    return [
        "--bus", f"sqlite:///{tmp_path / 'bus.db'}",
        "--store", f"sqlite:///{tmp_path / 'results.db'}",
        "--blobs", f"file://{tmp_path / 'blobs'}",
    ]  # fmt: skip


def _keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """A scanner's key (sends scans) and a viewer's (reads them)."""
    pipeline = str(APP.pipeline_path())
    assert main(["admin", "create-tenant", pipeline, *_urls(tmp_path), "acme"]) == 0
    keys = []
    for role in ("device", "viewer"):
        args = ["--tenant", "acme", "--name", role, "--role", role]
        assert main(["admin", "create-key", pipeline, *_urls(tmp_path), *args]) == 0
        keys.append(capsys.readouterr().out.strip().splitlines()[-1])
    return keys[0], keys[1]


def _call(url: str, key: str, body: bytes | None = None) -> dict[str, Any]:
    headers = {"X-API-Key": key, "Content-Type": "application/dicom"}
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        found: dict[str, Any] = json.loads(answer.read())
    return found


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_every_scans_trace_arrives_from_the_api_and_both_stages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], receiver: OtlpReceiver
) -> None:
    device, viewer = _keys(tmp_path, capsys)
    pipeline, port = str(APP.pipeline_path()), free_port()
    plain = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env = dict(plain, OTEL_BSP_SCHEDULE_DELAY="100", INFERSTREAM_JWT_SECRET=JWT_SECRET)
    base = [sys.executable, "-m", "inferstream"]
    serve = [*base, "serve", pipeline, *_urls(tmp_path), "--port", str(port),
             "--otlp-endpoint", receiver.url, "--trace-url", VIEWER]  # fmt: skip
    processes = [subprocess.Popen(serve, env=env)]
    workers_env = dict(env, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url)  # the variable this time
    for stage in ("classify", "store"):
        worker = [*base, "worker", pipeline, *_urls(tmp_path), "--stage", stage]
        processes.append(subprocess.Popen(worker, env=workers_env))
    api = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _healthy(f"{api}/healthz"), 60), "serve did not start"
        scans = [scan.payload.inline for scan in egg_envelopes(SCANS, seed=77)]
        ids = [_call(f"{api}/v1/scans", device, dicom)["ids"][0] for dicom in scans]
        assert len(set(ids)) == SCANS

        def statuses() -> list[dict[str, Any]]:
            return [_call(f"{api}/v1/scans/{scan_id}", viewer) for scan_id in ids]

        assert wait_for(lambda: all(s["status"] == "processed" for s in statuses()), 120)
        bodies = statuses()
        traces = {body["id"]: body["trace_id"] for body in bodies}
        assert len(set(traces.values())) == SCANS  # a trace of its own for each scan
        assert all(b["trace_url"] == VIEWER.format(trace_id=b["trace_id"]) for b in bodies)

        def whole() -> set[str]:
            return {t for t, spans in receiver.by_trace().items() if _is_whole(spans)}

        assert wait_for(lambda: set(traces.values()) <= whole(), 60), (
            f"{len(set(traces.values()) - whole())} of {SCANS} traces incomplete"
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
    received = receiver.by_trace()
    for scan_id, trace_id in traces.items():
        spans = received[trace_id]
        [request] = [s for s in spans if s.name == "POST /v1/scans"]
        classify = [s for s in spans if s.name == "stage classify"]
        store = [s for s in spans if s.name == "stage store"]
        assert request.service == "inferstream-api" and request.parent_id == ""
        assert {(s.service, s.stage) for s in classify} == {("inferstream-worker", "classify")}
        assert {(s.service, s.stage) for s in store} == {("inferstream-worker", "store")}
        assert all(s.attributes["inferstream.root_id"] == scan_id for s in classify + store)
        assert all(s.parent_id == request.span_id for s in classify)
        assert {s.parent_id for s in store} <= {s.span_id for s in classify}


def _is_whole(spans: list[Received]) -> bool:
    """The request's span, and each stage's span that ended ok, are all in."""
    names = {(s.name, s.attributes.get("inferstream.outcome", "")) for s in spans}
    return {("POST /v1/scans", ""), ("stage classify", "ok"), ("stage store", "ok")} <= names
