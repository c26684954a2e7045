"""What a pipeline is: frozen dataclasses that a file parses into or Python builds.

Every setting has its default here, so ``PipelineSpec(name=..., stages=...)`` runs on
the embedded bus, SQLite results and a local blob folder with nothing else said.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from inferstream.blobs import DEFAULT_THRESHOLD
from inferstream.bus.base import RetentionPolicy
from inferstream.errors import ConfigError
from inferstream.event_time import DEFAULT_MAX_CLOCK_SKEW_S
from inferstream.routing import Predicate, Route, Router

if TYPE_CHECKING:
    from inferstream.application import AppSpec
    from inferstream.dataflow.join import JoinSpec
    from inferstream.dataflow.window import WindowSpec
    from inferstream.envelope import Envelope

DEFAULT_BUS = "sqlite:///.inferstream/bus.db"
DEFAULT_STORE = "sqlite:///.inferstream/results.db"
DEFAULT_BLOBS = "file://.inferstream/blobs"
DEFAULT_CLAIM_CHECK_BYTES = DEFAULT_THRESHOLD
#: The claim-check size on the embedded bus with a local blob folder. Every byte in the
#: embedded bus's log is written twice (the log, then the file) and fills the log whose
#: restarts hold every writer while they sync (56-79 ms, every 3 s at 1,233 scans/s of
#: 33 KB), while a blob read back from a local folder costs microseconds. With every
#: scan kept as a blob (as the API keeps them), the flagship's p99 at 1,000 scans/s went
#: from 50-53 ms inline to 19-29 ms claim-checked, and the API took 12-16 % more scans
#: in batches (docs/benchmarks.md, "Scans out of the embedded bus's log"). On Kafka, or
#: with blobs behind a network, a read costs a request and the log takes big messages in
#: its stride: the default stays.
LOCAL_CLAIM_CHECK_BYTES = 16 * 1024
#: How long a caught-up input of a join or window stays quiet before it counts as idle.
DEFAULT_IDLE_MS = 1000.0


@dataclass(frozen=True)
class BatchSettings:
    """Micro-batch knobs: take up to ``max_size`` messages, wait at most ``max_wait_ms``."""

    max_size: int = 64
    max_wait_ms: float = 10.0


@dataclass(frozen=True)
class StepSpec:
    ref: str
    params: Mapping[str, Any] = field(default_factory=dict)
    line: int | None = None
    #: The step runs on an envelope only if ``when`` holds and ``unless`` does not (the
    #: routing predicates); the others pass it unchanged.
    when: Predicate | None = None
    unless: Predicate | None = None

    def takes(self, env: Envelope) -> bool:
        return (self.when is None or self.when.holds(env)) and not (
            self.unless is not None and self.unless.holds(env)
        )


@dataclass(frozen=True)
class StageSpec:
    """One stage: what it reads, the steps it runs, where its outputs go.

    ``input`` and ``output`` take one topic or a tuple of them (read several topics;
    broadcast every output to several). ``routes`` replace ``output`` when outputs go
    to topics by a predicate (:mod:`inferstream.routing`). A stage with ``join`` or
    ``window`` is stateful: the operator runs first, its outputs then go through the
    steps (:mod:`inferstream.dataflow`).
    """

    name: str
    input: str | tuple[str, ...]
    steps: tuple[StepSpec, ...]
    output: str | tuple[str, ...] | None = None
    routes: tuple[Route, ...] = ()
    #: Topics for outputs that no route takes; ``("drop",)`` discards them.
    otherwise: tuple[str, ...] = ()
    #: Where a new consumer group starts reading: the oldest retained message or new ones.
    start: Literal["earliest", "latest"] = "earliest"
    join: JoinSpec | None = None
    window: WindowSpec | None = None
    #: A join or window input with no lag that sent nothing for this long is idle: its
    #: watermark follows the clock, so the last window closes and joins time out.
    idle_ms: float = DEFAULT_IDLE_MS
    batch: BatchSettings = BatchSettings()
    replicas: int = 1
    #: Attempts per message before it goes to ``<input>.dlq``.
    max_attempts: int = 3
    #: CPU priority of the stage's worker processes (0-19; higher yields the CPU to
    #: others first), so an API on the same machine answers before batch work runs.
    nice: int = 0
    line: int | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,) if isinstance(self.input, str) else tuple(self.input)

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.output is None:
            return ()
        return (self.output,) if isinstance(self.output, str) else tuple(self.output)

    @property
    def router(self) -> Router:
        return Router(outputs=self.outputs, routes=self.routes, otherwise=self.otherwise)

    @property
    def stateful(self) -> bool:
        """Whether the stage keeps durable state (a join or a window)."""
        return self.join is not None or self.window is not None

    def group(self, pipeline: str) -> str:
        """Consumer group id: replicas of a stage share it and split the partitions."""
        return f"{pipeline}.{self.name}"

    def writes(self) -> set[str]:
        """Every topic the stage's workers may write: its outputs and routes, the dead
        letters of its inputs, and (a join or window) their late events."""
        topics = set(self.router.all_topics()) | {f"{topic}.dlq" for topic in self.inputs}
        if self.stateful:
            topics |= {f"{topic}.late" for topic in self.inputs}
        return topics


@dataclass(frozen=True)
class PromotionSpec:
    """A promotion policy the pipeline's chores apply (``promotion:`` in the file):
    challenger against champion on labelled records, and demotion of a champion whose
    accuracy falls below a floor (:mod:`inferstream.promotion`)."""

    model: str
    champion: str = "champion"
    challenger: str = "challenger"
    head: str = ""  # the application's first head by default
    min_labels: int = 200
    alpha: float = 0.05
    margin: float = 0.0
    #: Roll the champion back when even the upper end of its accuracy's 95 % interval
    #: is below this (with at least ``min_labels`` labelled records); None: never.
    demote_below: float | None = None
    #: Tenants whose labelled records count; empty: every tenant the store knows.
    labels_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetrainSpec:
    """Continuous retraining (``retraining:`` in the file), run by the pipeline's trainer
    process: once ``min_new_labels`` more records are labelled than the newest retrained
    version learnt from, the application's ``learner`` fits a new version on every
    labelled record, which is registered and given ``alias`` (a shadow step follows it),
    then left to the pipeline's promotion policy (:mod:`inferstream.retraining`)."""

    model: str
    #: A learner the application declares (``AppSpec.learners``).
    learner: str
    alias: str = "challenger"
    head: str = ""  # the application's first head by default
    min_new_labels: int = 200
    #: How often the trainer looks for new labels (and runs the promotion policies).
    every_s: float = 30.0
    #: Tenants whose labelled records it learns from; empty: every tenant the store knows.
    labels_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    stages: tuple[StageSpec, ...]
    #: Declared topics (those fed from outside must be), topic -> partitions.
    topics: Mapping[str, int] = field(default_factory=dict)
    #: Retention of declared topics that set it, applied by ``inferstream up``.
    retention: Mapping[str, RetentionPolicy] = field(default_factory=dict)
    bus: str = DEFAULT_BUS
    store: str = DEFAULT_STORE
    blobs: str = DEFAULT_BLOBS
    #: ``claim_check_kb`` as the file sets it; None for the default of its URLs (see
    #: :attr:`claim_check_bytes`).
    claim_check_kb: int | None = None
    #: How far ahead of the ingesting host's clock a producer's event time may be, at the
    #: API and at ``check_ingest`` (:mod:`inferstream.event_time`); further is refused.
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S
    source: Path | None = None
    #: The application whose records this pipeline makes (its steps, models, schema).
    app: str | None = None
    #: This installation's settings of the application (``settings:``; see its docs).
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: Promotion policies the chores apply (``inferstream up`` every minute, and its
    #: trainer process at its own pace when the file retrains a model).
    promotions: tuple[PromotionSpec, ...] = ()
    #: Models retrained while the pipeline runs (a trainer process beside the workers).
    retraining: tuple[RetrainSpec, ...] = ()

    @functools.cached_property
    def claim_check_bytes(self) -> int:
        """Payloads larger than this travel as a claim check (a blob reference), not
        inline: ``claim_check_kb`` if the file sets it, else
        :data:`LOCAL_CLAIM_CHECK_BYTES` on the embedded bus with a local blob folder and
        :data:`DEFAULT_CLAIM_CHECK_BYTES` otherwise (worked out once from the URLs in use,
        command-line overrides included: :meth:`with_urls` makes a new spec). The API
        reads it for every scan."""
        if self.claim_check_kb is not None:
            return self.claim_check_kb * 1024
        local = urlsplit(self.bus).scheme == "sqlite" and urlsplit(self.blobs).scheme == "file"
        return LOCAL_CLAIM_CHECK_BYTES if local else DEFAULT_CLAIM_CHECK_BYTES

    def application(self) -> AppSpec | None:
        """The application the pipeline serves, with this file's settings of it; None
        when it names none. :class:`ConfigError` if unknown or its settings are wrong."""
        from inferstream.application import app_named

        return app_named(self.app).with_settings(self.settings) if self.app else None

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        hint = did_you_mean(name, [s.name for s in self.stages])
        raise ConfigError(f"pipeline {self.name!r} has no stage {name!r}{hint}")

    def partitions(self, topic: str) -> int:
        """Partition count of ``topic``: declared, or that of the pipeline's widest input.

        Dead letters and late events keep their message's key, so ``x.dlq`` and
        ``x.late`` have as many partitions as ``x``: one key stays on one partition
        number, and a stateful stage reading ``x`` and ``x.dlq`` sees it in one task.
        """
        if topic not in self.topics:
            for suffix in (".dlq", ".late"):
                if topic.endswith(suffix):
                    return self.partitions(topic.removesuffix(suffix))
        return self.topics.get(topic, max(self.topics.values(), default=1))

    def upstream(self, stage_name: str) -> tuple[tuple[str, str], ...]:
        """(topic, group) of every stage input upstream of ``stage_name`` in this file:
        the readers of whatever writes its inputs, and theirs, to the sources.

        While any of them has lag, messages that may reach the stage are still on their
        way; a join or window does not treat its inputs as idle then.
        """
        found: dict[tuple[str, str], None] = {}
        wanted, seen = list(self.stage(stage_name).inputs), set()
        while wanted:
            topic = wanted.pop()
            if topic in seen:
                continue
            seen.add(topic)
            for writer in self.stages:
                if topic in writer.writes():
                    found.update(dict.fromkeys((i, writer.group(self.name)) for i in writer.inputs))
                    wanted += writer.inputs
        return tuple(sorted(found))

    def with_urls(
        self, bus: str | None = None, store: str | None = None, blobs: str | None = None
    ) -> PipelineSpec:
        """A copy with some URLs replaced (command-line overrides)."""
        return dataclasses.replace(
            self, bus=bus or self.bus, store=store or self.store, blobs=blobs or self.blobs
        )


def file_prefix(spec: PipelineSpec) -> str:
    """``path: `` of the file a spec came from (nothing for a spec built in Python)."""
    return f"{spec.source}: " if spec.source else ""


def line_prefix(stage: StageSpec) -> str:
    """``line N: `` of a stage in its file, to start a message about it."""
    return f"line {stage.line}: " if stage.line else ""


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` naming the closest candidate, or nothing; ends an error."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
