"""The v2 inference protocol, driven by the real ``tritonclient.http`` against the API
under uvicorn: health, metadata and inference on the flagship's model, whose answers must
be exactly what the pipeline's own classify step computes on the same tensors.

The tensors are the flagship's: generated egg scans as DICOM, through the pipeline's own
decode, preprocess and guard steps; the reference is its classify step (built as a
worker builds it, following ``egg_sexing@champion`` in the registry).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from api_testing import JWT_SECRET, World, serve_app, start_world
from egg_scans import egg_envelopes, flagship
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from inferstream.api import ApiSettings
from inferstream.blobs import open_blob_store
from inferstream.classify import softmax
from inferstream.envelope import Envelope, from_tensor
from inferstream.registry import ModelRegistry
from inferstream.runner import build_steps
from inferstream.shipped import served_by_default, shipped_versions
from inferstream.store import ResultsStore

MODEL = "egg_sexing"
#: The versions the application ships (fp32, int8), all registered on first use.
SHIPPED = [shipped.version for shipped in shipped_versions(MODEL)]
MAX_BATCH = 8
MAX_BODY = 1024 * 1024


@dataclass
class Served:
    world: World
    client: triton.InferenceServerClient
    registry: ModelRegistry
    #: The flagship's preprocessed scans (MAX_BATCH of them) and what its classify
    #: step made of each: the label and the scores in the model's label order.
    scans: NDArray[np.float32]
    labels: list[str]
    scores: list[list[float]]

    def headers(self, role: str = "viewer", tenant: str | None = None) -> dict[str, str]:
        return self.world.headers(tenant or self.world.own, role)


def _negated(graph: bytes) -> bytes:
    """The graph with its logits negated: another version, whose answers tell it apart."""
    model = onnx.load_from_string(graph)
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["raw_" + output if name == output else name for name in node.output]
    model.graph.node.append(onnx.helper.make_node("Neg", ["raw_" + output], [output]))
    return model.SerializeToString()


def _shipped() -> tuple[bytes, dict[str, Any]]:
    """The files of the version the pipeline serves on first use (the application says which)."""
    served = served_by_default(shipped_versions(MODEL))
    graph = served.path.read_bytes()
    return graph, json.loads(served.path.with_suffix(".json").read_text())


def _through_the_pipeline(settings: ApiSettings) -> tuple[NDArray[np.float32], list[Envelope]]:
    """The flagship's classify stage on generated scans, as a worker runs it: the tensors
    its preprocessing made and the envelopes its classify step scored."""
    spec = settings.pipeline
    steps = build_steps(spec, spec.stage("classify"), "v2-test")
    try:
        batch: list[Any] = egg_envelopes(MAX_BATCH, seed=11)
        for step in steps[:-1]:  # decode, preprocess, the guard
            batch = step.process(batch)
        assert all(isinstance(env, Envelope) for env in batch), batch
        tensors = np.stack([from_tensor(env.payload.tensor) for env in batch])
        steps[-1].begin_batch({})
        scored = steps[-1].process(batch)
    finally:
        for step in steps:
            step.close()
    assert all(isinstance(env, Envelope) and env.predictions for env in scored), scored
    return tensors.astype(np.float32), scored  # type: ignore[return-value]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    spec = flagship(tmp_path_factory.mktemp("v2"))
    settings = ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6,
                           max_batch=MAX_BATCH, max_body_bytes=MAX_BODY)  # fmt: skip
    tensors, scored = _through_the_pipeline(settings)  # registers the shipped model first
    store = ResultsStore(spec.store)
    registry = ModelRegistry(store, open_blob_store(spec.blobs))
    worlds = start_world(settings)
    world = next(worlds)
    graph, info = _shipped()
    registry.register(_negated(graph), {**info, "version": "acme-neg"}, actor="test",
                      tenant=world.own)  # fmt: skip
    with serve_app(settings) as port:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
        order = info["labels"]
        yield Served(
            world, client, registry, tensors,
            labels=[env.predictions[-1].label for env in scored],
            scores=[[env.predictions[-1].scores[label] for label in order] for env in scored],
        )  # fmt: skip
        client.close()
    worlds.close()
    store.close()


def _scan_input(scans: NDArray[Any], binary: bool = True, datatype: str = "FP32") -> Any:
    tensor = triton.InferInput("scan", list(scans.shape), datatype)
    tensor.set_data_from_numpy(scans, binary_data=binary)
    return tensor


def _refusal(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_health_is_public_and_server_metadata_needs_a_credential(served: Served) -> None:
    assert served.client.is_server_live()
    assert served.client.is_server_ready()
    meta = served.client.get_server_metadata(headers=served.headers())
    assert meta["name"] == "inferstream"
    assert "binary_tensor_data" in meta["extensions"]
    refused = _refusal(served.client.get_server_metadata)
    assert refused.status() == "401"
    assert "no credentials" in refused.message()


def test_model_metadata_is_the_graph_the_pipeline_serves(served: Served) -> None:
    other = served.headers(tenant=served.world.other)
    meta = served.client.get_model_metadata(MODEL, headers=other)
    assert meta == {
        "name": MODEL,
        "versions": SHIPPED,
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "scan", "datatype": "FP32", "shape": [-1, 1, 64, 64]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
    }
    assert served.client.is_model_ready(MODEL, headers=served.headers())
    assert served.client.is_model_ready(MODEL, "1.0.0", headers=served.headers())
    assert not served.client.is_model_ready("no_such_model", headers=served.headers())
    refused = _refusal(lambda: served.client.get_model_metadata("no_such", headers=other))
    assert refused.status() == "404"
    assert "not served here; the pipeline serves egg_sexing" in refused.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_inference_is_what_the_classify_step_computes(served: Served, binary: bool) -> None:
    outputs = [triton.InferRequestedOutput("logits", binary_data=binary)]
    result = served.client.infer(MODEL, [_scan_input(served.scans, binary)], outputs=outputs,
                                 request_id="batch-1", headers=served.headers())  # fmt: skip
    answer = result.get_response()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (
        MODEL, _shipped()[1]["version"], "batch-1"
    )  # fmt: skip
    logits = result.as_numpy("logits")
    assert logits.dtype == np.float32
    assert logits.shape == (MAX_BATCH, 3)
    probabilities = softmax(logits)
    assert probabilities.tolist() == served.scores  # exactly, value for value
    labels = [_shipped()[1]["labels"][i] for i in probabilities.argmax(axis=1)]
    assert labels == served.labels
    assert len(set(labels)) > 1, "a batch of one label would not show the order kept"


def test_a_request_without_outputs_gets_every_output_as_bytes(served: Served) -> None:
    result = served.client.infer(MODEL, [_scan_input(served.scans[:2])], headers=served.headers())
    (output,) = result.get_response()["outputs"]
    assert output["parameters"] == {"binary_data_size": 2 * 3 * 4}
    assert softmax(result.as_numpy("logits")).tolist() == served.scores[:2]


def test_bad_requests_are_refused_with_the_reason(served: Served) -> None:
    def refused(*inputs: Any) -> InferenceServerException:
        return _refusal(lambda: served.client.infer(MODEL, list(inputs), headers=served.headers()))

    wrong_type = refused(_scan_input(served.scans[:1].astype(np.float64), datatype="FP64"))
    assert wrong_type.status() == "400"
    assert "input 'scan' is FP32, the request says 'FP64'" in wrong_type.message()
    small = refused(_scan_input(served.scans[:1, :, :32, :32]))
    assert small.status() == "400"
    assert "has shape [-1, 1, 64, 64]" in small.message()
    assert "the request says [1, 1, 32, 32]" in small.message()
    for binary, reason in ((False, "holds 4096 values; shape [2, 1, 64, 64] holds 8192"),
                           (True, "binary_data_size 16384; shape [2, 1, 64, 64] of FP32 is "
                                  "32768 bytes")):  # fmt: skip
        short = _scan_input(served.scans[:1], binary)
        short.set_shape([2, 1, 64, 64])
        mismatch = refused(short)
        assert mismatch.status() == "400"
        assert reason in mismatch.message()
    stranger = triton.InferInput("image", [1], "FP32")
    stranger.set_data_from_numpy(np.zeros(1, np.float32))
    unknown = refused(_scan_input(served.scans[:1]), stranger)
    assert unknown.status() == "400"
    assert "inputs ['image'] are not the model's; its inputs: scan" in unknown.message()


def test_a_batch_or_a_body_over_the_limits_is_413(served: Served) -> None:
    def refused(*inputs: Any) -> InferenceServerException:
        return _refusal(lambda: served.client.infer(MODEL, list(inputs), headers=served.headers()))

    too_many = refused(_scan_input(np.concatenate([served.scans, served.scans[:1]])))
    assert too_many.status() == "413"
    assert f"batch of {MAX_BATCH + 1}; at most {MAX_BATCH} per request" in too_many.message()
    padding = triton.InferInput("padding", [MAX_BODY // 4], "FP32")
    padding.set_data_from_numpy(np.zeros(MAX_BODY // 4, np.float32))
    too_big = refused(_scan_input(served.scans[:1]), padding)
    assert too_big.status() == "413"
    assert f"over the limit of {MAX_BODY} bytes" in too_big.message()


def test_inference_needs_a_credential_of_a_reading_role(served: Served) -> None:
    scans = served.scans[:1]
    anonymous = _refusal(lambda: served.client.infer(MODEL, [_scan_input(scans)]))
    assert anonymous.status() == "401"
    device = _refusal(lambda: served.client.infer(MODEL, [_scan_input(scans)],
                                                  headers=served.headers("device")))  # fmt: skip
    assert device.status() == "403"
    assert "role 'device' may not do this" in device.message()
    for role in ("admin", "operator", "viewer"):
        result = served.client.infer(MODEL, [_scan_input(scans)], headers=served.headers(role))
        assert softmax(result.as_numpy("logits")).tolist() == served.scores[:1]


def test_a_tenants_private_version_is_its_own(served: Served) -> None:
    world, client = served.world, served.client
    own, other = served.headers(tenant=world.own), served.headers(tenant=world.other)
    assert client.get_model_metadata(MODEL, headers=own)["versions"][-1] == "acme-neg"
    assert "acme-neg" not in client.get_model_metadata(MODEL, headers=other)["versions"]
    assert client.get_model_metadata(MODEL, "acme-neg", headers=own)["name"] == MODEL
    assert client.is_model_ready(MODEL, "acme-neg", headers=own)
    scans = [_scan_input(served.scans[:2])]
    result = client.infer(MODEL, scans, model_version="acme-neg", headers=own)
    assert result.get_response()["model_version"] == "acme-neg"
    reference = client.infer(MODEL, scans, headers=own).as_numpy("logits")
    assert np.array_equal(result.as_numpy("logits"), -reference)
    assert not client.is_model_ready(MODEL, "acme-neg", headers=other)
    hidden_metadata = _refusal(lambda: client.get_model_metadata(MODEL, "acme-neg", headers=other))
    hidden_infer = _refusal(
        lambda: client.infer(MODEL, scans, model_version="acme-neg", headers=other)
    )
    for hidden in (hidden_metadata, hidden_infer):
        assert hidden.status() == "404"
        assert f"no version 'acme-neg' you can use; its versions: {', '.join(SHIPPED)}" in (
            hidden.message()
        )


def test_the_served_version_follows_the_deployments_alias(served: Served) -> None:
    """As the workers do: the alias moves, the next request runs the version it points at."""
    graph, info = _shipped()
    served.registry.register(_negated(graph), {**info, "version": "2.0.0"}, actor="test")
    served.registry.set_alias(MODEL, "champion", "2.0.0", actor="test", reason="v2 test")
    try:
        result = served.client.infer(MODEL, [_scan_input(served.scans[:2])],
                                     headers=served.headers())  # fmt: skip
        assert result.get_response()["model_version"] == "2.0.0"
        assert softmax(-result.as_numpy("logits")).tolist() == served.scores[:2]
    finally:
        served.registry.set_alias(MODEL, "champion", _shipped()[1]["version"], actor="test",
                                  reason="v2 test")  # fmt: skip
