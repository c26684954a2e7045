"""Pipeline definitions: a YAML file or the same dataclasses built in Python.

A pipeline names its bus, results store and blob store by URL, declares the
topics fed from outside (ingest), and lists stages. Each stage reads one topic as
a consumer group, runs its steps fused on every micro-batch, and writes one topic
(or none, for a sink). Example::

    name: eggs
    bus: sqlite:///.inferstream/bus.db        # or kafka://127.0.0.1:9092
    store: sqlite:///.inferstream/results.db  # or postgresql+psycopg://...
    blobs: file://.inferstream/blobs
    claim_check_kb: 256                       # larger payloads go to the blob store
    topics:
      scans.raw: {partitions: 4, retention_hours: 24}
    stages:
      - name: classify
        input: scans.raw
        output: scans.predicted
        steps: [decode_dicom, preprocess_scan, {step: classify, model: egg_sexing}]
        batch: {max_size: 64, max_wait_ms: 5}
        replicas: 2
      - name: store
        input: scans.predicted
        steps: [store_results]

``${NAME}`` and ``${NAME:-default}`` in a value are replaced from the environment,
so one file runs on one machine or on a cluster by changing variables only. A value
that is only a reference takes the type of what it expands to (``replicas: ${R:-2}``
is the number 2) unless it is quoted (``version: "${V:-1.0}"`` stays a string).
Validation (:func:`validate`) reports the file and line of each problem;
:func:`wiring_warnings` what runs but is likely a mistake (unread dead letters).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inferstream.bus.base import RetentionPolicy
from inferstream.errors import ConfigError

DEFAULT_BUS = "sqlite:///.inferstream/bus.db"
DEFAULT_STORE = "sqlite:///.inferstream/results.db"
DEFAULT_BLOBS = "file://.inferstream/blobs"
DEFAULT_CLAIM_CHECK_BYTES = 256 * 1024

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        names = [s.name for s in self.stages]
        raise ConfigError(f"pipeline {self.name!r} has no stage {name!r}{_suggest(name, names)}")

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


def _suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _LineLoader(yaml.SafeLoader):
    """A safe YAML loader noting each mapping's line and which strings were quoted."""


class _QuotedStr(str):
    """A string the file wrote quoted (or as a block): ``${...}`` in it stays a string."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping: dict[str, Any] = {
        str(k): v for k, v in loader.construct_mapping(node, deep=True).items()
    }
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


def _construct_string(loader: _LineLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    # Only a plain scalar's type comes from how it reads; any other style is a string
    # by the author's choice, which expanding a reference in it must keep.
    return value if node.style is None else _QuotedStr(value)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG, _construct_string)


def _env_value(match: re.Match[str], file: Path) -> str:
    name, default = match.group(1), match.group(2)
    value = os.environ.get(name)
    if value:  # like the shell's ${X:-d}, an empty variable takes the default
        return value
    if default is not None:
        return default
    if value is None:
        raise ConfigError(
            f"{file}: ${{{name}}} is not set; export {name}=... or write ${{{name}:-default}}"
        )
    return value


def _expand_env(value: Any, file: Path) -> Any:
    """Replace ``${NAME}``/``${NAME:-default}``; an unquoted lone reference is retyped."""
    if isinstance(value, str):
        expanded = str(_ENV_PATTERN.sub(lambda m: _env_value(m, file), value))
        if _retyped(value) and expanded != value:
            # `replicas: ${REPLICAS:-2}` should be the number 2, as if written so.
            return yaml.safe_load(expanded) if expanded else expanded
        return expanded
    if isinstance(value, dict):
        return {_expand_env(k, file): _expand_env(v, file) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, file) for v in value]
    return value


def _retyped(value: str) -> bool:
    """Whether ``value`` takes the type of what it expands to: an unquoted lone reference."""
    return not isinstance(value, _QuotedStr) and _ENV_PATTERN.fullmatch(value) is not None


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Read and validate a pipeline file; :class:`ConfigError` names file and line."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline file {file}: {exc.strerror}") from exc
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: a pipeline file must be a mapping with 'name' and 'stages'")
    from inferstream.pipeline_parse import parse_pipeline

    spec = parse_pipeline(_expand_env(raw, file), file)
    validate(spec)
    return spec


def validate(spec: PipelineSpec) -> None:
    """Check the wiring of a pipeline; raise :class:`ConfigError` listing every problem."""
    from inferstream.pipeline_parse import wiring_problems

    problems = wiring_problems(spec)
    if problems:
        where = f"{spec.source}: " if spec.source else ""
        raise ConfigError(where + ("\n  " if len(problems) > 1 else "") + "\n  ".join(problems))


def wiring_warnings(spec: PipelineSpec) -> list[str]:
    """What in a valid pipeline is likely a mistake (it runs as it is), one line each."""
    from inferstream.pipeline_parse import unread_dead_letters

    where = f"{spec.source}: " if spec.source else ""
    return [where + warning for warning in unread_dead_letters(spec)]
