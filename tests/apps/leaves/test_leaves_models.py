"""The shipped models against the simulator's truth, on a seed training never saw.

Measured with the shipped models (docs/leaves-model-card.md: seed 1001, 30 positions x
3 days): detector precision and recall 1.00; graders 0.83-0.90 exact grade, rust v2
0.88. The floors below leave room for the sampling of this smaller held-out set.
"""

from __future__ import annotations

import pytest

from inferstream.apps.leaves.model_card import MODELS, evaluate, shipped_graders
from inferstream.apps.leaves.simulator import DISEASES
from inferstream.classify import load_model

DETECTOR_FLOOR = 0.97
GRADER_FLOOR = 0.75


@pytest.fixture(scope="module")
def evaluation():  # type: ignore[no-untyped-def]
    return evaluate(load_model(MODELS / "leaf_detector"), shipped_graders(), positions=8, days=2)


def test_the_detector_finds_the_leaves(evaluation) -> None:  # type: ignore[no-untyped-def]
    assert evaluation.precision >= DETECTOR_FLOOR
    assert evaluation.recall >= DETECTOR_FLOOR


@pytest.mark.parametrize("disease", [*DISEASES, "rust_v2"])
def test_each_grader_grades_its_disease(evaluation, disease: str) -> None:  # type: ignore[no-untyped-def]
    assert evaluation.accuracy[f"leaf_{disease}"] >= GRADER_FLOOR
    assert evaluation.within_one[f"leaf_{disease}"] >= 0.95


def test_each_grader_is_its_own_model_and_says_what_it_grades() -> None:
    graders = shipped_graders()
    assert {m.info.name for m in graders.values()} == {f"leaf_{d}" for d in DISEASES}
    assert graders["leaf_rust_v2"].info.version == "2.0.0"
    assert graders["leaf_rust"].info.version == "1.0.0"
    assert all(m.info.labels == ("0", "1", "2", "3", "4") for m in graders.values())
