"""Small general-purpose steps, useful in example pipelines and in tests.

- ``passthrough``: forwards every message unchanged (a stage that only moves data).
- ``fail_if``: fails messages whose attribute matches, to exercise retries and
  dead letters (``permanent: true`` raises InvalidInput, else a retryable error).
- ``tag``: sets attributes on every message.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferstream.envelope import Envelope
from inferstream.errors import InvalidInput
from inferstream.steps import Outcome, Step, StepContext


class Passthrough(Step):
    name = "passthrough"

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        return list(batch)


class FailIf(Step):
    name = "fail_if"

    def __init__(self, attribute: str, equals: str, permanent: bool) -> None:
        self.attribute = attribute
        self.equals = equals
        self.permanent = permanent

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        return [self._check(env) for env in batch]

    def _check(self, env: Envelope) -> Outcome:
        if env.attributes.get(self.attribute) != self.equals:
            return env
        reason = f"attribute {self.attribute}={self.equals!r} is marked to fail"
        return InvalidInput(reason) if self.permanent else ValueError(reason)


class Tag(Step):
    name = "tag"

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = {str(k): str(v) for k, v in attributes.items()}

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        for env in batch:
            env.attributes.update(self.attributes)
        return list(batch)


def passthrough(context: StepContext) -> Step:
    return Passthrough()


def fail_if(
    context: StepContext, attribute: str = "poison", equals: str = "1", permanent: bool = False
) -> Step:
    return FailIf(attribute, equals, permanent)


def tag(context: StepContext, **attributes: str) -> Step:
    return Tag(attributes)
