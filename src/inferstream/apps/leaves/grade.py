"""Grader steps: ``grade_leaf`` (one factory, one stage per disease) and
``leaf_summary`` (after the join: the five grades of a leaf as one record).

A grader classifies the crop tensor with its own model (``leaf_<disease>``, or a named
version such as ``leaf_rust_v2``) through the core's classify step, then states on the
record what it graded and with which model: ``disease_type``, ``predicted_grade``,
``disease_model_id`` and ``disease_model_version``.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferstream.apps.leaves.simulator import DISEASES
from inferstream.classify import ROLES, ClassifyStep, load_model
from inferstream.envelope import Envelope
from inferstream.errors import ConfigError
from inferstream.steps import Outcome, Step, StepContext

HEAD = "grade"


class GradeLeaf(Step):
    name = "grade_leaf"

    def __init__(self, disease: str, classify: ClassifyStep) -> None:
        self.disease = disease
        self.classify = classify

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        outcomes = self.classify.process(batch)
        for outcome in outcomes:
            if isinstance(outcome, Envelope):
                self._label(outcome)
        return outcomes

    def _label(self, env: Envelope) -> None:
        prediction = env.predictions[-1]
        env.attributes.update(
            {
                "record_kind": "grade",
                "disease_type": self.disease,
                "predicted_grade": prediction.label,
                "disease_model_id": prediction.model_name,
                "disease_model_version": prediction.model_version,
            }
        )


def grade_step(context: StepContext, disease: str, model: str = "") -> GradeLeaf:
    """Step factory (``{step: grade_leaf, disease: rust}``); ``model`` defaults to
    ``leaf_<disease>``, the version shipped with the application."""
    if disease not in DISEASES:
        raise ConfigError(
            f"stage {context.stage!r}: no disease {disease!r}; the graders are "
            f"{', '.join(DISEASES)}"
        )
    loaded = load_model(model or f"leaf_{disease}")
    return GradeLeaf(disease, ClassifyStep(loaded, ROLES["champion"], HEAD))


class LeafSummary(Step):
    """One joined leaf: ``grade_<disease>`` per grader that answered, its worst grade as
    ``predicted_grade``; per-disease model fields do not apply to it and are cleared."""

    name = "leaf_summary"

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        return [self._summarise(env) for env in batch]

    @staticmethod
    def _summarise(env: Envelope) -> Envelope:
        grades = {}
        for prediction in env.predictions:
            disease = prediction.model_name.removeprefix("leaf_")
            if prediction.head == HEAD and disease in DISEASES:
                grades[disease] = int(prediction.label)
        for name in ("disease_model_id", "disease_model_version", "predicted_grade"):
            env.attributes.pop(name, None)
        env.attributes.update({f"grade_{d}": str(g) for d, g in grades.items()})
        env.attributes["record_kind"] = "leaf"
        env.attributes["disease_type"] = "all"
        if grades:
            env.attributes["predicted_grade"] = str(max(grades.values()))
        return env


def leaf_summary_step(context: StepContext) -> LeafSummary:
    return LeafSummary()
