"""The shipped egg-sexing model through the classify step, end to end on envelopes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inferstream.apps.eggs import APP, LABELS
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.apps.eggs.preprocess import PreprocessStep, preprocess_batch
from inferstream.classify import ClassifyStep, load_model
from inferstream.envelope import Envelope, ModelRole, new_envelope, to_tensor
from inferstream.errors import ConfigError, InvalidInput, ModelError
from inferstream.steps import StepContext, build_step

TENSOR = "application/x-inferstream-tensor"
CONTEXT = StepContext(pipeline="eggs", stage="classify")


def _scan_envelope(scan: np.ndarray, egg_id: str) -> Envelope:
    env = new_envelope(b"", TENSOR, key=egg_id, attributes={"egg_id": egg_id})
    env.payload.tensor.CopyFrom(to_tensor(scan))
    return env


def test_shipped_model_matches_the_contract() -> None:
    model = load_model("egg_sexing")
    info = model.info
    assert (info.name, info.labels) == ("egg_sexing", LABELS)
    assert (info.input, info.output, info.input_shape) == ("scan", "logits", (1, 64, 64))
    assert 10_000_000 <= info.macs <= 30_000_000
    assert (APP.models_dir / "egg_sexing.onnx").stat().st_size < 2_000_000
    labels, probs = model.predict(np.zeros((5, 1, 64, 64), dtype=np.float32))
    assert len(labels) == 5 and probs.shape == (5, 3)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_serving_a_model_sends_no_telemetry(tmp_path: Path) -> None:
    """ONNX Runtime's own telemetry (on by default since 1.29) stays off: no device id,
    no event queue for upload written under the user's home."""
    # ONNX Runtime also stays quiet on build servers it recognises: not a reason to pass.
    quiet = {"ORT_DISABLE_TELEMETRY", "ORT_RUNNING_UNIT_TESTS", "CI", "TF_BUILD",
             "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
             "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR",
             "BITBUCKET_BUILD_NUMBER"}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    env["HOME"] = str(tmp_path)
    code = (
        "import numpy as np\n"
        "from inferstream.classify import load_model\n"
        "load_model('egg_sexing').predict(np.zeros((2, 1, 64, 64), dtype=np.float32))\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert list(tmp_path.rglob("*")) == []


def test_the_pipeline_sexes_fresh_eggs_accurately() -> None:
    specs = make_specs(400, seed=777)
    scans = render_batch(specs)
    batch = [_scan_envelope(scan, s.egg_id) for scan, s in zip(scans, specs, strict=True)]
    prepared = PreprocessStep().process(batch)
    step = build_step("classify", CONTEXT, {"model": "egg_sexing", "role": "champion"})
    outcomes = step.process([env for env in prepared if isinstance(env, Envelope)])
    assert len(outcomes) == len(specs)
    correct = 0
    for spec, out in zip(specs, outcomes, strict=True):
        assert isinstance(out, Envelope) and out.attributes["egg_id"] == spec.egg_id
        (prediction,) = out.predictions
        assert (prediction.model_name, prediction.model_version) == ("egg_sexing", "1.0.0")
        assert prediction.role == ModelRole.MODEL_ROLE_CHAMPION
        assert set(prediction.scores) == set(LABELS)
        assert sum(prediction.scores.values()) == pytest.approx(1, abs=1e-5)
        assert prediction.label == max(prediction.scores, key=prediction.scores.__getitem__)
        assert prediction.predicted_at_us > 0
        assert out.payload.content_type == TENSOR and not out.payload.HasField("tensor")
        correct += prediction.label == spec.label
    assert correct / len(specs) > 0.98


def test_bad_tensors_fail_alone_and_the_rest_is_classified() -> None:
    specs = make_specs(2, seed=778)
    inputs = preprocess_batch(render_batch(specs))
    good = [_scan_envelope(x, s.egg_id) for x, s in zip(inputs, specs, strict=True)]
    wrong_shape = _scan_envelope(np.zeros((1, 32, 32), np.float32), "EGG-X")
    wrong_dtype = _scan_envelope(np.zeros((1, 64, 64), np.float64), "EGG-Y")
    inline = new_envelope(b"dicom bytes", "application/dicom")
    step = build_step("classify", CONTEXT, {"model": "egg_sexing", "role": "shadow"})
    outcomes = step.process([good[0], wrong_shape, wrong_dtype, inline, good[1]])
    for slot, reason in ((1, "[1, 32, 32]"), (2, "float64"), (3, "tensor payload")):
        assert isinstance(outcomes[slot], InvalidInput) and reason in str(outcomes[slot])
    for slot in (0, 4):
        out = outcomes[slot]
        assert isinstance(out, Envelope)
        assert out.predictions[0].role == ModelRole.MODEL_ROLE_SHADOW


def test_models_load_from_a_path_and_bad_models_are_refused(tmp_path: Path) -> None:
    for suffix in (".onnx", ".json"):
        shutil.copy(APP.models_dir / f"egg_sexing{suffix}", tmp_path / f"copy{suffix}")
    assert load_model(tmp_path / "copy").info.name == "egg_sexing"
    assert load_model(str(tmp_path / "copy.onnx")).info.version == "1.0.0"
    with pytest.raises(ModelError, match="egg_sexing"):
        load_model("no_such_model")
    (tmp_path / "copy.json").write_text('{"name": "x"}')
    with pytest.raises(ModelError, match="lacks"):
        load_model(tmp_path / "copy")
    with pytest.raises(ConfigError, match="role"):
        build_step("classify", CONTEXT, {"model": "egg_sexing", "role": "boss"})
    with pytest.raises(ConfigError, match="names no model"):
        build_step("classify", CONTEXT, {})
    assert isinstance(build_step("classify", CONTEXT, {"model": "egg_sexing"}), ClassifyStep)


def test_a_shadow_step_leaves_the_tensor_for_the_acting_step_after_it() -> None:
    specs = make_specs(4, seed=779)
    inputs = preprocess_batch(render_batch(specs))
    batch = [_scan_envelope(x, s.egg_id) for x, s in zip(inputs, specs, strict=True)]
    shadow = build_step("classify", CONTEXT, {"model": "egg_sexing", "role": "shadow"})
    acting = build_step("classify", CONTEXT, {"model": "egg_sexing"})
    scored = acting.process(shadow.process(batch))  # type: ignore[arg-type]
    for out in scored:
        assert isinstance(out, Envelope) and out.payload.WhichOneof("body") is None
        roles = [p.role for p in out.predictions]
        assert roles == [ModelRole.MODEL_ROLE_SHADOW, ModelRole.MODEL_ROLE_CHAMPION]
        assert out.predictions[0].label == out.predictions[1].label  # the same model
    (after,) = shadow.process(acting.process(batch[:1]))  # type: ignore[arg-type]
    assert isinstance(after, InvalidInput) and "list shadow steps before it" in str(after)
