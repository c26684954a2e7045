"""Drift before labels: every classify step exports what each model version sees and
says (label mix, confidence, an input statistic), and the shipped alert rules fire on
series that drift and stay quiet on series that do not (``promtool test rules``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY

from inferstream.apps.eggs import APP
from inferstream.envelope import new_envelope, to_tensor
from inferstream.steps import StepContext, build_step

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "inferstream-models.rules.yml"


def _sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_classify_step_exports_label_mix_confidence_and_input_mean() -> None:
    context = StepContext(pipeline="drift", stage="classify", app=APP)
    step = build_step("classify", context, {"model": "egg_sexing"})
    where = {"pipeline": "drift", "stage": "classify", "model": "egg_sexing",
             "version": "1.0.0"}  # fmt: skip
    labels = ("female", "male", "not_developing")

    def predictions() -> float:
        return sum(
            _sample("inferstream_model_predictions_total", label=label, **where) for label in labels
        )

    before = {
        "count": _sample("inferstream_model_confidence_count", **where),
        "input": _sample("inferstream_model_input_mean_sum", **where),
        "labels": predictions(),
    }
    rng = np.random.default_rng(3)
    batch = []
    for value in (0.2, 0.4, 0.6):
        noise = rng.normal(0, 0.01, (1, 64, 64)).astype(np.float32)
        env = new_envelope(b"", "application/x-tensor")
        env.payload.tensor.CopyFrom(to_tensor(np.full((1, 64, 64), value, np.float32) + noise))
        batch.append(env)
    outs = step.process(batch)
    given = [o.predictions[0] for o in outs]  # type: ignore[union-attr]
    assert _sample("inferstream_model_confidence_count", **where) - before["count"] == 3
    confidence_sum = sum(p.scores[p.label] for p in given)
    assert _sample("inferstream_model_confidence_sum", **where) >= confidence_sum - 1e-6
    added = _sample("inferstream_model_input_mean_sum", **where) - before["input"]
    assert abs(added - 1.2) < 0.01  # 0.2 + 0.4 + 0.6
    assert predictions() - before["labels"] == 3


def test_the_shipped_drift_rules_are_valid_and_fire_only_on_drift() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "install promtool: apt-get install -y prometheus"
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "models_rules_test.yml"],
        cwd=ROOT / "tests" / "prometheus", capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
