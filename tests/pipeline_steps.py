"""User steps for the pipeline tests, loaded by import path like any user code.

The worker processes started by ``inferstream up`` import this module as
``pipeline_steps:label_step``; the tests put this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from inferstream.envelope import Envelope, ModelRole, Prediction, now_us
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
