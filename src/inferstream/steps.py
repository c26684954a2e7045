"""Steps: the units of work a stage runs on each micro-batch.

A step takes the whole batch and returns one *outcome* per input, in order:

- an :class:`Envelope` — the (possibly modified) message goes on;
- a list of envelopes — fan-out (an empty list drops the message);
- an exception instance — this message failed; :class:`InvalidInput` sends it to
  the dead-letter topic at once, anything else is retried with backoff first.

Steps never set ids or lineage: the worker derives deterministic output ids when
the stage's last step is done. Built-in steps are named in :data:`BUILTIN_STEPS`, an
application's in its :class:`~inferstream.application.AppSpec`; other steps are named
by import path ``package.module:factory``. A factory is
called as ``factory(context, **params)`` with the parameters from the pipeline
file and returns a :class:`Step`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferstream.application import AppSpec
from inferstream.blobs import DEFAULT_THRESHOLD, BlobStore
from inferstream.envelope import Envelope
from inferstream.errors import ConfigError
from inferstream.event_time import DEFAULT_MAX_CLOCK_SKEW_S

Outcome = Envelope | list[Envelope] | BaseException


@dataclass(frozen=True)
class StepContext:
    """What a step factory may need from the pipeline around it."""

    pipeline: str
    stage: str
    worker: str = ""
    store_url: str | None = None
    blobs: BlobStore | None = None
    #: The application the pipeline serves (``app:`` in the file), when it names one.
    app: AppSpec | None = None
    #: The pipeline's ``max_clock_skew_s``: a step taking outside producers' event times
    #: refuses those further ahead of this host's clock (:mod:`inferstream.event_time`).
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S
    #: The pipeline's claim-check size (``PipelineSpec.claim_check_bytes``): a step that
    #: keeps items as blobs sends those above it as claim checks.
    claim_check_bytes: int = DEFAULT_THRESHOLD
    extra: Mapping[str, Any] = field(default_factory=dict)


class Step(ABC):
    """One step of a stage. Subclasses implement :meth:`process`."""

    #: Name used in logs and error messages.
    name: str = "step"

    @abstractmethod
    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        """Return one outcome per envelope in ``batch``, in the same order."""

    def begin_batch(self, positions: Mapping[tuple[str, int], int]) -> None:  # noqa: B027
        """Called by the worker before each batch, with the offset of the batch's first
        message on each (topic, partition) in it: a step that changes what it does
        (a model switch) does it here, so one batch is all old or all new. Called after
        an empty poll too (with the next offsets of the partitions read so far), so an
        idle worker changes before its next message, not with it."""

    def close(self) -> None:  # noqa: B027 - most steps hold nothing to release
        """Release resources (connections, sessions); called once at shutdown."""


class ConditionalStep(Step):
    """A step that runs only on the envelopes its condition takes (``when:`` holds and
    ``unless:`` does not, in the pipeline file); the others pass it unchanged, in
    their places in the batch."""

    def __init__(self, inner: Step, takes: Callable[[Envelope], bool]) -> None:
        self.inner, self.takes = inner, takes
        self.name = inner.name

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        chosen = [i for i, env in enumerate(batch) if self.takes(env)]
        if len(chosen) == len(batch):
            return self.inner.process(batch)
        outcomes: list[Outcome] = list(batch)
        if chosen:
            done = self.inner.process([batch[i] for i in chosen])
            for i, outcome in zip(chosen, done, strict=True):
                outcomes[i] = outcome
        return outcomes

    def begin_batch(self, positions: Mapping[tuple[str, int], int]) -> None:
        self.inner.begin_batch(positions)

    def close(self) -> None:
        self.inner.close()


#: Built-in step name -> "module:factory".
BUILTIN_STEPS: dict[str, str] = {
    "passthrough": "inferstream.builtin_steps:passthrough",
    "fail_if": "inferstream.builtin_steps:fail_if",
    "tag": "inferstream.builtin_steps:tag",
    "classify": "inferstream.serving:classify_step",
    "remote_classify": "inferstream.remote_classify:remote_classify_step",
    "store_results": "inferstream.store:store_step",
    "check_ingest": "inferstream.ingest_step:check_ingest_step",
}

StepFactory = Callable[..., Step]


def resolve_factory(ref: str, app_steps: Mapping[str, str] | None = None) -> StepFactory:
    """Find the factory a pipeline file names: one of its application's steps, a
    built-in name, or ``module:attr``."""
    named = {**BUILTIN_STEPS, **(app_steps or {})}
    target = named.get(ref, ref)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(sorted(named))
        raise ConfigError(
            f"unknown step {ref!r}: use a step of the pipeline's application or a built-in "
            f"one ({known}), or an import path like 'mypackage.steps:make_step'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"step {ref!r}: cannot import module {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"step {ref!r}: module {module_name!r} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def build_step(
    ref: str,
    context: StepContext,
    params: Mapping[str, Any],
    app_steps: Mapping[str, str] | None = None,
) -> Step:
    factory = resolve_factory(ref, app_steps)
    try:
        step = factory(context, **params)
    except TypeError as exc:
        raise ConfigError(
            f"step {ref!r} in stage {context.stage!r}: bad parameters: {exc}"
        ) from exc
    if not isinstance(step, Step):
        raise ConfigError(
            f"step {ref!r} in stage {context.stage!r}: factory returned "
            f"{type(step).__name__}, expected an inferstream.steps.Step"
        )
    return step
