"""A second application, defined only here through the public API: leaf grading.

Each photo fans out into ``CROPS`` leaf crops (1 -> N); each crop is graded by two
heads, ``grade`` and ``colour``, by a tiny deterministic "model" (no weights needed:
what is under test is the platform, not the grader). Its records have fields of
their own: ``leaf_id`` (the subject), ``field`` (the group), ``drone`` (the source)
and an integer ``crop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from inferstream import (
    AppSpec,
    Attribute,
    Envelope,
    Head,
    Label,
    ModelRole,
    Outcome,
    Prediction,
    Ratio,
    Step,
    StepContext,
    register_app,
)

CROPS = 3
CHAMPION, SHADOW = ModelRole.MODEL_ROLE_CHAMPION, ModelRole.MODEL_ROLE_SHADOW
GRADES = ("healthy", "rust")
COLOURS = ("green", "brown")

APP = register_app(
    AppSpec(
        name="leaves-test",
        title="Leaf grading (test)",
        package=__name__,
        subject="leaf_id",
        group="field",
        group_noun="field",
        source="drone",
        attributes=(
            Attribute("leaf_id", filterable=True),
            Attribute("field", filterable=True, client=True),
            Attribute("drone", filterable=True, client=True),
            Attribute("crop", "int"),
            Attribute("height", "int", filterable=True),
            Attribute("photo", description="the photo the crop was cut from"),
        ),
        heads=(
            Head("grade", (Label("healthy", "#009e73"), Label("rust", "#d55e00"))),
            Head("colour", (Label("green", "#56b4e9"), Label("brown", "#e69f00"))),
        ),
        ratios=(Ratio("healthy_ratio", "grade", "healthy"),),
        content_types=("image/png",),
        panels=("throughput", "mix", "newest"),  # no labels arrive late: no accuracy
        steps={
            "crop_leaves": "fanout_app:crop_step",
            "grade_leaves": "fanout_app:grade_step",
        },
    )
)


class CropLeaves(Step):
    """One photo in, ``CROPS`` leaf crops out (a list outcome is a fan-out)."""

    name = "crop_leaves"

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        return [self._crops(env) for env in batch]

    @staticmethod
    def _crops(env: Envelope) -> list[Envelope]:
        crops = []
        for index in range(CROPS):
            crop = Envelope()
            crop.CopyFrom(env)
            crop.attributes["crop"] = str(index)
            crop.attributes["photo"] = env.id
            crop.attributes["leaf_id"] = f"{env.id}-{index}"
            crops.append(crop)
        return crops


class GradeLeaves(Step):
    """Answers both heads from the crop's number: champion grade, shadow grade, colour."""

    name = "grade_leaves"

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        for env in batch:
            crop = int(env.attributes["crop"])
            grade, colour = GRADES[crop % 2], COLOURS[(crop + 1) % 2]
            env.predictions.extend(
                [
                    _answer("grade", "grader", "1", role=CHAMPION, label=grade, labels=GRADES),
                    _answer("grade", "grader", "2-rc", role=SHADOW, label="rust", labels=GRADES),
                    _answer("colour", "colourer", "1", role=CHAMPION, label=colour, labels=COLOURS),
                ]
            )
        return list(batch)


def _answer(
    head: str, model: str, version: str, *, role: int, label: str, labels: Sequence[str]
) -> Prediction:
    scores = {name: 0.9 if name == label else 0.1 for name in labels}
    return Prediction(
        head=head, model_name=model, model_version=version, role=role, label=label, scores=scores
    )


def crop_step(context: StepContext) -> Step:
    return CropLeaves()


def grade_step(context: StepContext) -> Step:
    return GradeLeaves()


def pipeline_file(tmp_path: Path, bus_url: str) -> Path:
    path = tmp_path / "leaves.yaml"
    path.write_text(
        f"""
name: leaves-{tmp_path.name[-8:]}
app: {APP.name}
bus: {bus_url}
store: sqlite:///{tmp_path / "results.db"}
blobs: file://{tmp_path / "blobs"}
topics:
  photos: {{partitions: 2}}
stages:
  - name: grade
    input: photos
    output: graded
    steps: [crop_leaves, grade_leaves]
    batch: {{max_size: 8, max_wait_ms: 5}}
  - name: store
    input: graded
    steps: [store_results]
  - name: dead-letters
    input: photos.dlq
    steps: [store_results]
  - name: store-dead-letters
    input: graded.dlq
    steps: [store_results]
"""
    )
    return path
