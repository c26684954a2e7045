"""The public API is pinned: a change to it must be a deliberate change of this list."""

from __future__ import annotations

import subprocess
import sys

import inferstream

PUBLIC = [
    "AppSpec", "Attribute", "Checked", "Codec", "ConfigError", "Envelope", "Head",
    "ImageLimits", "InferstreamError", "InvalidInput", "KeyedState", "Label", "ModelRole",
    "Outcome", "PipelineSpec", "Prediction", "Ratio", "StatefulStep", "Step", "StepContext",
    "TransientError",
    "__version__", "app_named", "from_tensor", "load_pipeline", "new_envelope",
    "register_app", "register_codec", "to_tensor",
]  # fmt: skip


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(inferstream.__all__) == sorted(PUBLIC)


def test_every_public_name_resolves() -> None:
    for name in inferstream.__all__:
        assert getattr(inferstream, name) is not None, name


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        inferstream.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("inferstream.NoSuchThing resolved")


def test_importing_the_package_loads_no_image_or_model_library() -> None:
    heavy = "('cv2', 'onnxruntime', 'torch')"
    probe = f"import sys, inferstream; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
