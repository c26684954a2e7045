"""The shipped int8 copy of the flagship model: the fp32 contract, made from the fp32
model that ships, as accurate on held-out scans, and what the registry serves first."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferstream.apps.eggs import APP, LABELS
from inferstream.apps.eggs.int8_card import INT8_MODEL, compare_models
from inferstream.apps.eggs.phantom import generate
from inferstream.apps.eggs.preprocess import preprocess_batch
from inferstream.blobs import LocalBlobStore
from inferstream.classify import load_model
from inferstream.errors import ConfigError
from inferstream.registry import ADOPTER, ModelRegistry
from inferstream.store import ResultsStore

FP32 = APP.models_dir / "egg_sexing"
INT8 = APP.models_dir / INT8_MODEL
REQUANTISE = "run python -m inferstream.apps.eggs.quantize"
#: Held-out scans of this test: a seed no training, calibration or card uses.
SEED, SCANS = 4001, 3000


def _meta() -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(INT8.with_suffix(".json").read_text())
    return meta


def test_the_int8_model_keeps_the_fp32_contract() -> None:
    fp32, int8 = load_model("egg_sexing"), load_model(INT8_MODEL)
    assert (int8.info.name, int8.info.version) == ("egg_sexing", f"{fp32.info.version}-int8")
    assert int8.info.labels == fp32.info.labels == LABELS
    assert (int8.info.input, int8.info.output) == (fp32.info.input, fp32.info.output)
    assert int8.info.input_shape == fp32.info.input_shape == (1, 64, 64)
    for batch in (1, 7, 64):
        labels, probs = int8.predict(np.zeros((batch, 1, 64, 64), dtype=np.float32))
        assert len(labels) == batch and probs.shape == (batch, len(LABELS))
    # Quantised: int8 weights, a graph a fraction of the fp32 one's size.
    assert _meta()["quantization"]["weights"].startswith("int8")
    assert INT8.with_suffix(".onnx").stat().st_size < FP32.with_suffix(".onnx").stat().st_size / 2


def test_it_was_made_from_the_fp32_model_that_ships() -> None:
    made_from = _meta()["quantized_from"]
    shipped = hashlib.sha256(FP32.with_suffix(".onnx").read_bytes()).hexdigest()
    assert made_from["sha256"] == shipped, (
        f"egg_sexing.onnx changed since the int8 model was made from it; {REQUANTISE}"
    )
    assert made_from["version"] == load_model("egg_sexing").info.version, REQUANTISE


def test_on_held_out_scans_it_is_within_0_3_points_of_fp32() -> None:
    found = compare_models(load_model("egg_sexing"), load_model(INT8_MODEL), SEED, SCANS)
    assert found.n == SCANS
    assert found.within(0.3), (
        f"int8 {found.candidate_accuracy:.4f} against fp32 {found.reference_accuracy:.4f} "
        f"on {SCANS} held-out scans: more than 0.3 points below"
    )
    assert found.agree / found.n > 0.99  # the same model, not one as accurate by chance
    # What the quantise command recorded, and the decision it drew from it.
    held = _meta()["held_out"]
    assert held["scans"] >= 10_000 and held["seed"] not in (SEED, 1001)
    qualifies = held["int8_accuracy"] >= held["fp32_accuracy"] - 0.003
    assert _meta()["serve_by_default"] is qualifies


@pytest.fixture
def registry(store_url: str, tmp_path: Path) -> Any:
    store = ResultsStore(store_url)
    yield ModelRegistry(store, LocalBlobStore(tmp_path / "blobs"))
    store.close()


def test_the_registry_serves_int8_first_and_keeps_fp32_beside_it(
    registry: Any, tmp_path: Path
) -> None:
    adopted = registry.adopt_shipped("egg_sexing", "champion")
    assert adopted is not None and adopted.version == "1.0.0-int8"
    assert [v.version for v in registry.versions("egg_sexing")] == ["1.0.0", "1.0.0-int8"]
    alias = registry.history("egg_sexing")[0]
    assert (alias.action, alias.actor, alias.to_version) == ("alias", ADOPTER, "1.0.0-int8")
    assert "also registered: 1.0.0" in alias.reason
    scans = preprocess_batch(next(generate(64, seed=SEED))[1])
    served = registry.load(adopted)
    assert np.array_equal(served.logits(scans), load_model(INT8_MODEL).logits(scans))
    # A lost int8 artifact heals from the shipped file, like the fp32 one.
    stored = tmp_path / "blobs" / "models_registry" / "models" / "egg_sexing" / "1.0.0-int8"
    (stored / "model.onnx").unlink()
    assert registry.load(adopted).info.version == "1.0.0-int8"
    assert (stored / "model.onnx").read_bytes() == INT8.with_suffix(".onnx").read_bytes()
    # Back to fp32 is one alias move.
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="ops", reason="fp32 again")
    back = registry.load(registry.resolve("egg_sexing", "champion"))
    assert back.info.version == "1.0.0"
    assert np.array_equal(back.logits(scans), load_model("egg_sexing").logits(scans))


def test_remeasure_rewrites_the_throughput_record_and_the_card(tmp_path: Path) -> None:
    # The quantise command's --remeasure on a copy of the shipped models: only the
    # throughput record changes, measured here, and the card shows it.
    from inferstream.apps.eggs.quantize import remeasure

    models = tmp_path / "models"
    shutil.copytree(APP.models_dir, models)
    before = json.loads((models / f"{INT8_MODEL}.json").read_text())
    before["throughput"]["batch_1"]["fp32"] = -1  # a figure no measurement gives
    (models / f"{INT8_MODEL}.json").write_text(json.dumps(before))
    card = tmp_path / "card.md"
    found = remeasure(models, card, rounds=1)
    after = json.loads((models / f"{INT8_MODEL}.json").read_text())
    assert after["throughput"] == found
    assert {k: v for k, v in after.items() if k != "throughput"} == {
        k: v for k, v in before.items() if k != "throughput"
    }
    for batch in (1, 16, 64):
        row = found[f"batch_{batch}"]
        assert row["fp32"] > 0 and row["int8"] > 0 and row["ratio"] > 0
    assert found["vnni"] in ("AVX-512 VNNI", "AVX-VNNI", "AVX-512 VNNI and AVX-VNNI", "no VNNI")
    text = card.read_text()
    assert "medians of 1 rounds taking turns" in text and found["vnni"] in text
    row = found["batch_64"]
    assert f"| 64 | {row['fp32']:,} | {row['int8']:,} | {row['ratio']:.2f} |" in text
    # The shipped record is untouched.
    assert json.loads(INT8.with_suffix(".json").read_text())["throughput"]["batch_1"]["fp32"] > 0
    # Without an int8 model there is nothing to measure: it says how to make one.
    (models / f"{INT8_MODEL}.onnx").unlink()
    with pytest.raises(ConfigError, match=r"python -m inferstream\.apps\.eggs\.quantize"):
        remeasure(models, card, rounds=1)
