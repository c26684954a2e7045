"""The ``remote_classify`` step against a real v2 model server (MLServer serving the
flagship's ONNX model), over REST and gRPC: the same predictions as in process, the
server's model name and version on each, micro-batches, timeouts and a server away as
transient errors, refusals at start, and the flagship end to end through a server
restart with a new version, counted by id."""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from egg_scans import egg_envelopes, flagship, wait_for_records
from flow_testing import produce_envelopes
from model_server import ModelServer, model_server

from inferstream.apps.eggs import APP
from inferstream.bus import open_bus
from inferstream.classify import ClassifyStep, load_model
from inferstream.envelope import Envelope, ModelRole, new_envelope, to_tensor
from inferstream.errors import (
    ConfigError,
    InferstreamError,
    ModelError,
    RemoteModelUnavailable,
    TransientError,
)
from inferstream.pipeline import PipelineSpec, StepSpec
from inferstream.remote_classify import remote_classify_step
from inferstream.steps import StepContext
from inferstream.store import ResultsStore
from inferstream.testing import pipeline_threads

MODEL = "egg_sexing"
SERVED_AS = "7"  # the version the server names, not the one our files carry
TENANT = "farm"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    with model_server(tmp_path_factory.mktemp("mlserver"), MODEL, SERVED_AS) as running:
        yield running


@pytest.fixture(params=["rest", "grpc"])
def url(request: pytest.FixtureRequest, server: ModelServer) -> str:
    return server.rest_url if request.param == "rest" else server.grpc_url


def context() -> StepContext:
    return StepContext(pipeline="eggs", stage="classify", app=APP)


def tensors(n: int, seed: int = 0) -> list[Envelope]:
    """Scans as the flagship's preprocessing hands them on: (1, 64, 64) float32."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        env = new_envelope(b"", "application/dicom", tenant=TENANT, key=f"egg-{i}")
        image = rng.normal(0.0, 1.0, (1, 64, 64)).astype(np.float32)
        env.payload.tensor.CopyFrom(to_tensor(image))
        out.append(env)
    return out


def test_the_remote_model_predicts_what_the_model_in_process_does(url: str) -> None:
    batch = tensors(50, seed=1)
    local = ClassifyStep(load_model(MODEL), ModelRole.MODEL_ROLE_CHAMPION, "sex")
    remote = remote_classify_step(context(), url=url, model=MODEL, max_batch=16)
    try:
        expected = local.process(batch)
        got = remote.process(batch)  # four calls: 16 + 16 + 16 + 2
    finally:
        remote.close()
    assert len(got) == len(expected) == 50
    for mine, theirs in zip(got, expected, strict=True):
        assert isinstance(mine, Envelope) and isinstance(theirs, Envelope)
        (made,), (want,) = mine.predictions, theirs.predictions
        assert (made.model_name, made.model_version) == (MODEL, SERVED_AS)
        assert made.label == want.label and made.head == "sex"
        assert made.scores == pytest.approx(dict(want.scores), abs=1e-5)
        assert mine.payload.WhichOneof("body") is None  # results travel small, as classify's


def test_a_server_that_is_away_is_waited_for_not_failed(tmp_path: Path) -> None:
    for url in (f"http://127.0.0.1:{_closed_port()}", f"grpc://127.0.0.1:{_closed_port()}"):
        step = remote_classify_step(context(), url=url, model=MODEL, timeout_s=1.0)
        try:
            with pytest.raises(RemoteModelUnavailable) as away:
                step.process(tensors(2))
        finally:
            step.close()
        assert isinstance(away.value, TransientError)  # the worker retries, loses nothing
        assert MODEL in str(away.value) and url in str(away.value)


def test_a_server_that_never_answers_times_out_as_a_transient_error() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        for url in (f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port}"):
            started = time.monotonic()
            step = remote_classify_step(context(), url=url, model=MODEL, timeout_s=0.5)
            try:
                with pytest.raises(RemoteModelUnavailable):
                    step.process(tensors(1))
            finally:
                step.close()
            assert time.monotonic() - started < 10  # the timeout held, nothing hung


def test_a_model_the_server_lacks_or_labels_that_do_not_fit_stop_the_worker_at_start(
    url: str,
) -> None:
    with pytest.raises(ConfigError, match="no_such_model"):
        remote_classify_step(context(), url=url, model="no_such_model")
    with pytest.raises(ConfigError, match="3 scores per scan"):
        remote_classify_step(context(), url=url, model=MODEL, labels=["female", "male"])
    with pytest.raises(ConfigError, match="predicts"):  # labels the head does not have
        remote_classify_step(context(), url=url, model=MODEL, labels=["a", "b", "c"])
    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        remote_classify_step(context(), url="ftp://models", model=MODEL)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def on_remote(spec: PipelineSpec, url: str) -> PipelineSpec:
    """The flagship with its classify step sent to the model server."""
    stages = []
    for stage in spec.stages:
        steps = tuple(
            dataclasses.replace(step, ref="remote_classify",
                                params={"url": url, "model": MODEL, "timeout_s": 2.0})
            if step.ref == "classify" else step
            for step in stage.steps
        )  # fmt: skip
        stages.append(dataclasses.replace(stage, steps=steps))
    assert any(StepSpec("remote_classify").ref == s.ref for st in stages for s in st.steps)
    return dataclasses.replace(spec, stages=tuple(stages))


def test_the_flagship_on_a_remote_model_waits_out_a_restart_and_stamps_the_new_version(
    tmp_path: Path,
) -> None:
    first = egg_envelopes(40, seed=11, tenant=TENANT)
    second = egg_envelopes(40, seed=12, tenant=TENANT)
    with model_server(tmp_path / "models", MODEL, "7") as remote:
        spec = on_remote(flagship(tmp_path), remote.grpc_url)
        bus, store = open_bus(spec.bus), ResultsStore(spec.store)
        try:
            with pipeline_threads(spec, replicas=1):
                produce_envelopes(bus, "scans.raw", first)
                assert wait_for_records(store, TENANT, 40) == 40
                remote.stop()  # the model server away: nothing can be classified
                produce_envelopes(bus, "scans.raw", second)
                time.sleep(4.0)
                stalled = store.count_results(TENANT)
                remote.serve(MODEL, "8")  # it comes back with a new version
                remote.start()
                assert wait_for_records(store, TENANT, 80) == 80
                time.sleep(0.5)  # anything doubled would land now
            records = store.list_results(TENANT, limit=1000).items
            dead = store.list_dead_letters(TENANT, limit=5).items
        finally:
            bus.close()
            store.close()
    assert stalled == 40  # waited, nothing dead-lettered or lost meanwhile
    assert dead == []
    assert sorted(r.root_id for r in records) == sorted(s.id for s in first + second)
    version = {r.root_id: r.model_version for r in records}
    assert {version[s.id] for s in first} == {"7"}
    assert {version[s.id] for s in second} == {"8"}
    assert {r.model_name for r in records} == {MODEL}


class _Answers(http.server.BaseHTTPRequestHandler):
    """A v2 REST server that answers the flagship model's metadata, then ``status``."""

    status = 200

    def do_GET(self) -> None:
        body = json.dumps({
            "name": MODEL, "versions": ["1"], "platform": "",
            "inputs": [{"name": "scan", "datatype": "FP32", "shape": [-1, 1, 64, 64]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
        }).encode()  # fmt: skip
        self._send(200, body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send(self.status, json.dumps({"error": f"answered {self.status}"}).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "transient"), [(503, True), (429, True), (504, True), (500, False), (400, False)]
)
def test_overloaded_is_transient_and_a_refusal_is_the_models_error(
    status: int, transient: bool
) -> None:
    handler = type("Answers", (_Answers,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    step = remote_classify_step(context(), url=url, model=MODEL)
    try:
        with pytest.raises(InferstreamError) as failed:
            step.process(tensors(2))
    finally:
        step.close()
        server.shutdown()
        server.server_close()
    # Transient: retried without limit. A refusal: retried with backoff, then the
    # message is dead-lettered with the server's words, so a partition never sticks.
    assert isinstance(failed.value, TransientError) is transient
    assert isinstance(failed.value, ModelError) is not transient
    assert f"answered {status}" in str(failed.value)
