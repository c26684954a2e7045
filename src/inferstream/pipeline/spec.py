"""What a pipeline is: frozen dataclasses that a file parses into or Python builds.

Every setting has its default here, so ``PipelineSpec(name=..., stages=...)`` runs on
the embedded bus, SQLite results and a local blob folder with nothing else said.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferstream.bus.base import RetentionPolicy
from inferstream.errors import ConfigError

DEFAULT_BUS = "sqlite:///.inferstream/bus.db"
DEFAULT_STORE = "sqlite:///.inferstream/results.db"
DEFAULT_BLOBS = "file://.inferstream/blobs"
DEFAULT_CLAIM_CHECK_BYTES = 256 * 1024


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


@dataclass(frozen=True)
class StageSpec:
    name: str
    input: str
    steps: tuple[StepSpec, ...]
    output: str | None = None
    batch: BatchSettings = BatchSettings()
    replicas: int = 1
    #: Attempts per message before it goes to ``<input>.dlq``.
    max_attempts: int = 3
    #: CPU priority of the stage's worker processes (0-19; higher yields the CPU to
    #: others first), so an API on the same machine answers before batch work runs.
    nice: int = 0
    line: int | None = None

    def group(self, pipeline: str) -> str:
        """Consumer group id: replicas of a stage share it and split the partitions."""
        return f"{pipeline}.{self.name}"


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
    #: Payloads larger than this travel as a claim check (blob reference), not inline.
    claim_check_bytes: int = DEFAULT_CLAIM_CHECK_BYTES
    source: Path | None = None
    #: The application whose records this pipeline makes (its steps, models, schema).
    app: str | None = None

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        hint = did_you_mean(name, [s.name for s in self.stages])
        raise ConfigError(f"pipeline {self.name!r} has no stage {name!r}{hint}")

    def partitions(self, topic: str) -> int:
        """Partition count of ``topic``: declared, or that of the pipeline's widest input."""
        return self.topics.get(topic, max(self.topics.values(), default=1))

    def with_urls(
        self, bus: str | None = None, store: str | None = None, blobs: str | None = None
    ) -> PipelineSpec:
        """A copy with some URLs replaced (command-line overrides)."""
        return dataclasses.replace(
            self, bus=bus or self.bus, store=store or self.store, blobs=blobs or self.blobs
        )


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` naming the closest candidate, or nothing; ends an error."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
