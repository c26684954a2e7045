"""Helpers shared by the operator tests: envelopes to feed, and a harness that runs an
operator the way the stateful worker does (state committed by its changes, restarts
from the committed state), with no bus and no database."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from inferstream.dataflow.operator import Emit, Operator
from inferstream.dataflow.task import TaskState
from inferstream.envelope import (
    DeadLetter,
    Envelope,
    EnvelopeBatch,
    FanOut,
    LineageStep,
    Payload,
    Prediction,
)

SECOND = 1_000_000


def event(
    ident: str,
    t_us: int,
    key: str = "k",
    *,
    source: str = "",
    attributes: Mapping[str, str] | None = None,
    parent: str = "",
    stage: str = "",
    label: str = "",
    frames: Sequence[tuple[str, int, int]] = (),
    failed_at: str = "",
) -> Envelope:
    """An envelope with event time ``t_us``; ``stage`` its last lineage step, ``label``
    a prediction, ``frames`` fan-out frames (parent, index, count), ``failed_at`` makes
    it a dead letter of that stage."""
    env = Envelope(
        schema_version=1,
        id=ident,
        root_id="root-" + ident,
        tenant="t",
        partition_key=key,
        source=source,
        created_at_us=t_us,
        parent_id=parent,
        payload=Payload(content_type="image/png", inline=b"pixels-" + ident.encode()),
    )
    env.attributes.update(attributes or {})
    if stage:
        env.lineage.append(LineageStep(stage=stage))
    if label:
        env.predictions.append(Prediction(model_name=stage or "m", label=label))
    for parent_id, index, count in frames:
        env.fanout.append(FanOut(parent_id=parent_id, index=index, count=count, stage="split"))
    if failed_at:
        env.lineage.append(LineageStep(stage=failed_at))
        env.error.CopyFrom(DeadLetter(stage=failed_at, error_type="Boom", message="boom"))
    return env


def members(env: Envelope) -> list[Envelope]:
    """The members a window output carries."""
    batch = EnvelopeBatch()
    batch.ParseFromString(env.payload.inline)
    return list(batch.envelopes)


def signature(emits: Sequence[Emit]) -> list[tuple[str, bytes, str, str]]:
    """Emits as comparable values (envelopes by their deterministic bytes)."""
    return [
        (e.kind, e.envelope.SerializeToString(deterministic=True), e.reason, e.topic) for e in emits
    ]


def with_duplicates(draw: Callable[[st.SearchStrategy[int]], int], msgs: list[Msg]) -> list[Msg]:
    """Redeliver some messages, each after its first delivery."""
    for _ in range(draw(st.integers(0, 3)) if msgs else 0):
        original = draw(st.integers(0, len(msgs) - 1))
        msgs.insert(draw(st.integers(original + 1, len(msgs))), msgs[original])
    return msgs


@dataclass(frozen=True)
class Msg:
    topic: str
    env: Envelope


@dataclass(frozen=True)
class Idle:
    topic: str
    now_us: int


Step = Msg | Idle


@dataclass
class Harness:
    """One task of an operator, committed and restarted like the worker does it."""

    operator: Operator
    task: TaskState = field(default_factory=lambda: TaskState("group", 0))
    #: The committed state, as the store would give it back.
    stored: dict[str, Any] = field(default_factory=dict)

    def step(self, step: Step) -> list[Emit]:
        if isinstance(step, Msg):
            return self.operator.on_message(self.task, step.topic, step.env)
        return self.operator.on_idle(self.task, step.topic, step.now_us)

    def run(self, steps: Sequence[Step]) -> list[Emit]:
        return [emit for s in steps for emit in self.step(s)]

    def commit(self) -> None:
        """Persist only what the task reports as changed, through JSON; the store then
        holds what the task holds, and no key was deleted that it did not hold."""
        written, deleted = self.task.changes()
        assert deleted <= set(self.stored), (
            f"deletes keys never stored: {deleted - set(self.stored)}"
        )
        self.stored.update(json.loads(json.dumps(written)))
        for key in deleted:
            del self.stored[key]
        self.task.mark_committed(self.task.version + 1)
        assert self.stored == json.loads(json.dumps(self.task.values))

    def restart(self) -> None:
        """Lose the in-memory state; continue from the committed one."""
        values = json.loads(json.dumps(self.stored))
        self.task = TaskState("group", 0, version=self.task.version, values=values)


@dataclass
class Run:
    """What a run emitted, step by step, and the task state it left."""

    outputs: list[list[Emit]]
    values: dict[str, Any]

    def signatures(self) -> list[list[tuple[str, bytes, str, str]]]:
        return [signature(emits) for emits in self.outputs]


def run_with_crash(
    make: Callable[[], Operator], steps: Sequence[Step], commits: Sequence[int], crash: int
) -> Run:
    """A run that commits after the steps in ``commits``, crashes after step ``crash``
    and redoes every step after the last commit before it (outputs of the lost steps
    are left out: the redo sends them again)."""
    harness = Harness(make())
    outputs: list[list[Emit]] = []
    last_commit = -1
    for index, s in enumerate(steps[: crash + 1]):
        outputs.append(harness.step(s))
        if index in commits:
            harness.commit()
            last_commit = index
    harness.restart()
    del outputs[last_commit + 1 :]
    outputs += [harness.step(s) for s in steps[last_commit + 1 :]]
    harness.commit()
    return Run(outputs, harness.stored)


def run_plain(make: Callable[[], Operator], steps: Sequence[Step]) -> Run:
    harness = Harness(make())
    outputs = [harness.step(s) for s in steps]
    harness.commit()
    return Run(outputs, harness.stored)
