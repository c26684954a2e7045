"""Running a stage's steps fused on one micro-batch, message by message accountable.

:func:`run_fused` takes the pending items of a batch through every step of a stage
with no topic in between. Each item ends with its outputs or its error; one bad
message never fails the others:

- a step that raises for the whole batch is retried one message at a time, which
  isolates the message that makes it fail;
- a step that breaks its contract (wrong number of outcomes, an outcome that is not
  an envelope, a list or an exception) fails the messages, with a message naming it;
- :class:`~inferstream.errors.TransientError` (a dependency is down) is the one
  exception that escapes: the caller retries the whole batch, and the attempt does
  not count against any message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from inferstream.bus import Message
from inferstream.envelope import Envelope
from inferstream.errors import TransientError
from inferstream.steps import Outcome, Step


class StepContractError(RuntimeError):
    """A step returned something other than one outcome per input."""


@dataclass
class Item:
    """One input message on its way through the steps."""

    message: Message
    envelope: Envelope | None
    input_id: str
    outputs: list[Envelope] = field(default_factory=list)
    error: BaseException | None = None
    attempts: int = 0
    #: Whether a step split this input into a list of outputs (a fan-out frame is due).
    fanned_out: bool = False


def copy(env: Envelope) -> Envelope:
    clone = Envelope()
    clone.CopyFrom(env)
    return clone


Flow = tuple[Item, Envelope]


def run_fused(steps: Sequence[Step], stage: str, items: Sequence[Item]) -> None:
    """One attempt at ``items`` through ``steps``: fills each item's outputs or error."""
    flows: list[Flow] = []
    for item in items:
        item.attempts += 1
        item.error = None
        item.outputs = []
        item.fanned_out = False
        assert item.envelope is not None, "unparsed messages never reach the steps"
        flows.append((item, copy(item.envelope)))  # each attempt starts from the original
    try:
        for step in steps:
            flows = _advance(flows, _run_step(step, stage, [env for _, env in flows]))
    except TransientError:
        for item in items:
            item.attempts -= 1  # the dependency failed, not the message
        raise
    for item, env in flows:
        item.outputs.append(env)


def _run_step(step: Step, stage: str, batch: list[Envelope]) -> list[Outcome]:
    if not batch:
        return []
    try:
        outcomes = step.process(batch)
        if len(outcomes) != len(batch):
            raise StepContractError(
                f"step {step.name!r} of stage {stage!r} returned {len(outcomes)} outcomes for "
                f"{len(batch)} messages; a step must return one outcome per input, in order"
            )
    except TransientError:
        raise
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
        # Find the message that breaks the batch by trying each one alone.
        return [_run_step(step, stage, [env])[0] for env in batch]
    return outcomes


def _advance(flows: list[Flow], outcomes: list[Outcome]) -> list[Flow]:
    """The flows after one step; outputs that share one object are copied apart."""
    nxt: list[Flow] = []
    seen: set[int] = set()
    for (item, _), outcome in zip(flows, outcomes, strict=True):
        if item.error is not None:
            continue
        if isinstance(outcome, BaseException):
            item.error = outcome
            continue
        envs = [outcome] if isinstance(outcome, Envelope) else outcome
        if isinstance(outcome, list):
            item.fanned_out = True
        if not isinstance(envs, list) or not all(isinstance(e, Envelope) for e in envs):
            item.error = StepContractError(
                f"a step returned {type(outcome).__name__}; outcomes must be an Envelope, "
                "a list of envelopes or an exception"
            )
            continue
        for env in envs:
            # The same object twice (fan-out of one envelope, or one shared by two
            # inputs) must become separate messages, each with its own id.
            nxt.append((item, copy(env) if id(env) in seen else env))
            seen.add(id(env))
    return [(item, env) for item, env in nxt if item.error is None]
