"""User steps for the pipeline tests, loaded by import path like any user code.

The worker processes started by ``inferstream up`` import this module as
``pipeline_steps:label_step``; the tests put this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from inferstream import KeyedState, StatefulStep
from inferstream.envelope import Envelope, ModelRole, Prediction, now_us
from inferstream.errors import InvalidInput
from inferstream.steps import Outcome, Step, StepContext


class ParityLabel(Step):
    """Labels messages by the parity of attribute ``n``; slow enough to be killed mid-batch."""

    name = "parity_label"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        time.sleep(self.delay_s)
        for env in batch:
            label = "even" if int(env.attributes["n"]) % 2 == 0 else "odd"
            env.predictions.append(
                Prediction(
                    model_name="parity",
                    model_version="1",
                    role=ModelRole.MODEL_ROLE_CHAMPION,
                    label=label,
                    scores={label: 1.0},
                    predicted_at_us=now_us(),
                )
            )
        return list(batch)


def label_step(context: StepContext, delay_ms: float = 5.0) -> Step:
    return ParityLabel(delay_ms / 1000)


class Split(Step):
    """Fans each message out into ``parts`` children (attribute ``parts``, else the
    parameter), each with attribute ``part``; a fan-out, so children get frames."""

    name = "split"

    def __init__(self, parts: int) -> None:
        self.parts = parts

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for env in batch:
            children = []
            for part in range(int(env.attributes.get("parts", self.parts))):
                child = Envelope()
                child.CopyFrom(env)
                child.attributes["part"] = str(part)
                children.append(child)
            outcomes.append(children)
        return outcomes


def split_step(context: StepContext, parts: int = 3) -> Step:
    return Split(parts)


class Grade(Step):
    """A stand-in grader: predicts ``n mod 3`` as the grade under model ``model``; fails
    (for good) the messages whose ``fail`` attribute names this model."""

    name = "grade"

    def __init__(self, model: str, delay_s: float) -> None:
        self.model = model
        self.delay_s = delay_s

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        time.sleep(self.delay_s)
        outcomes: list[Outcome] = []
        for env in batch:
            if env.attributes.get("fail") == self.model:
                outcomes.append(InvalidInput(f"grader {self.model} refuses {env.id}"))
                continue
            grade = str(expected_grade(env, self.model))
            env.predictions.append(
                Prediction(
                    model_name=self.model, model_version="1", label=grade, head=self.model,
                    scores={grade: 1.0}, predicted_at_us=now_us(),
                )
            )  # fmt: skip
            outcomes.append(env)
        return outcomes


def expected_grade(env: Envelope, model: str) -> int:
    """What :class:`Grade` predicts for ``env``: the offline reference uses it too."""
    return (int(env.attributes.get("n", "0")) + len(model)) % 3


def grade_step(context: StepContext, model: str = "g", delay_ms: float = 0.0) -> Step:
    return Grade(model, delay_ms / 1000)


class CountPerKey(StatefulStep):
    """Counts messages per partition key in durable keyed state; stamps the running count."""

    name = "count_per_key"

    def process_one(self, env: Envelope, state: KeyedState) -> Outcome:
        seen = int(state.get(env.partition_key, 0)) + 1
        state.put(env.partition_key, seen)
        env.attributes["seen"] = str(seen)
        return env


def count_step(context: StepContext) -> Step:
    return CountPerKey()
