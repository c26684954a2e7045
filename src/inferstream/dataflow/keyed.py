"""Keyed state for a user's step: counters, deduplication, last-seen values that survive
a crash and a rebalance, and never count a redelivered message twice.

A step that needs state subclasses :class:`StatefulStep` and implements
:meth:`~StatefulStep.process_one`, which sees one message at a time with the
:class:`KeyedState` of the message's task::

    class CountPerCamera(StatefulStep):
        name = "count_per_camera"

        def process_one(self, env, state):
            seen = state.get(env.source, 0) + 1
            state.put(env.source, seen)
            env.attributes["frames_so_far"] = str(seen)
            return env

The stage runs it in a stateful worker (:mod:`inferstream.dataflow.stateful_worker`),
which commits the state with the input offsets. A stateful step must be the stage's
first step; the steps after it run as usual on its outputs. Keys live per partition:
a message's key (its partition key) decides which task, and so which state, it meets.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from inferstream.dataflow.operator import Emit
from inferstream.dataflow.task import TaskState
from inferstream.envelope import Envelope, derive_id
from inferstream.errors import ConfigError, InvalidInput
from inferstream.steps import Outcome, Step

#: User keys live under this prefix, apart from the operators' own entries.
_PREFIX = "user:"


class KeyedState:
    """The keyed values one stateful step sees for one task (JSON values only)."""

    def __init__(self, task: TaskState) -> None:
        self._task = task

    def get(self, key: str, default: Any = None) -> Any:
        return self._task.get(_PREFIX + key, default)

    def put(self, key: str, value: Any) -> None:
        self._task.put(_PREFIX + key, value)

    def delete(self, key: str) -> None:
        self._task.delete(_PREFIX + key)

    def keys(self) -> Iterator[str]:
        return (key.removeprefix(_PREFIX) for key in self._task.keys(_PREFIX))


class StatefulStep(Step):
    """A step with durable keyed state; runs one message at a time."""

    @abstractmethod
    def process_one(self, env: Envelope, state: KeyedState) -> Outcome:
        """The outcome for ``env`` (an envelope, a list, or an exception instance)."""

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        raise ConfigError(
            f"step {self.name!r} keeps state and runs only as the first step of a stage; "
            "move it to the front of its stage's steps"
        )


class StepOperator:
    """Runs a :class:`StatefulStep` as a stage's operator."""

    def __init__(self, step: StatefulStep, stage: str) -> None:
        self.step = step
        self.stage = stage

    def on_message(self, task: TaskState, topic: str, env: Envelope) -> list[Emit]:
        outcome = self.step.process_one(env, KeyedState(task))
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, InvalidInput):
                raise outcome
            return [Emit("dead", env, f"{type(outcome).__name__}: {outcome}")]
        envs = [outcome] if isinstance(outcome, Envelope) else outcome
        for index, out in enumerate(envs):
            out.id, out.parent_id = derive_id(env.id, self.stage, index), env.id
        return [Emit("out", out) for out in envs]

    def on_idle(self, task: TaskState, topic: str, now_us: int) -> list[Emit]:
        return []

    def open_count(self, task: TaskState) -> int:
        return sum(1 for _ in task.keys(_PREFIX))
