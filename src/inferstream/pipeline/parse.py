"""Turn a mapping read from a pipeline file into a :class:`PipelineSpec`; check its wiring.

Every error names the line of the offending mapping: the loader
(:mod:`inferstream.pipeline.load`) adds a ``__line__`` key to each. :func:`validate`
reports every wiring problem at once; :func:`wiring_warnings` what runs but is likely a
mistake (unread dead letters).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferstream.application import app_named
from inferstream.bus.base import RetentionPolicy
from inferstream.errors import ConfigError
from inferstream.pipeline.spec import (
    DEFAULT_BLOBS,
    DEFAULT_BUS,
    DEFAULT_CLAIM_CHECK_BYTES,
    DEFAULT_STORE,
    BatchSettings,
    PipelineSpec,
    StageSpec,
    StepSpec,
    did_you_mean,
)
from inferstream.steps import resolve_factory

PIPELINE_KEYS = {"name", "app", "bus", "store", "blobs", "claim_check_kb", "topics", "stages"}
STAGE_KEYS = {"name", "input", "output", "steps", "batch", "replicas", "max_attempts", "nice"}
BATCH_KEYS = {"max_size", "max_wait_ms"}
TOPIC_KEYS = {"partitions", "retention_hours", "max_messages"}


def _at(file: Path, raw: Mapping[str, Any]) -> str:
    line = raw.get("__line__")
    return f"{file}:{line}" if line else str(file)


def _check_keys(raw: Mapping[str, Any], allowed: set[str], what: str, where: str) -> None:
    for key in raw:
        if key != "__line__" and key not in allowed:
            raise ConfigError(
                f"{where}: unknown {what} setting {key!r}{did_you_mean(key, sorted(allowed))}"
            )


def _positive_int(raw: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key} must be a whole number of at least 1, got {value!r}")
    return value


def _parse_batch(raw: Any, where: str) -> BatchSettings:
    if raw is None:
        return BatchSettings()
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: batch must be a mapping like {{max_size: 64, max_wait_ms: 10}}"
        )
    _check_keys(raw, BATCH_KEYS, "batch", where)
    wait = raw.get("max_wait_ms", BatchSettings.max_wait_ms)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
        raise ConfigError(f"{where}: batch.max_wait_ms must be a number >= 0, got {wait!r}")
    return BatchSettings(
        max_size=_positive_int(raw, "max_size", 64, where), max_wait_ms=float(wait)
    )


def _without_lines(value: Any) -> Any:
    """``value`` without the loader's ``__line__`` keys, at any depth (user step parameters)."""
    if isinstance(value, dict):
        return {k: _without_lines(v) for k, v in value.items() if k != "__line__"}
    if isinstance(value, list):
        return [_without_lines(v) for v in value]
    return value


def _parse_step(raw: Any, where: str) -> StepSpec:
    if isinstance(raw, str):
        return StepSpec(ref=raw)
    if isinstance(raw, dict) and isinstance(raw.get("step"), str):
        params = {k: _without_lines(v) for k, v in raw.items() if k not in ("step", "__line__")}
        return StepSpec(ref=raw["step"], params=params, line=raw.get("__line__"))
    raise ConfigError(
        f"{where}: a step is a name ('decode_dicom') or a mapping with 'step' and its "
        f"parameters ({{step: classify, model: egg_sexing}}), got {raw!r}"
    )


def _parse_stage(raw: Any, file: Path) -> StageSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: each stage must be a mapping with name, input and steps")
    where = _at(file, raw)
    _check_keys(raw, STAGE_KEYS, "stage", where)
    for key in ("name", "input"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{where}: stage needs a {key!r} (a non-empty string)")
    output = raw.get("output")
    if output is not None and not isinstance(output, str):
        raise ConfigError(f"{where}: output must be a topic name, got {output!r}")
    steps = raw.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"{where}: stage {raw['name']!r} needs a non-empty list of steps")
    return StageSpec(
        name=raw["name"],
        input=raw["input"],
        output=output,
        steps=tuple(_parse_step(s, where) for s in steps),
        batch=_parse_batch(raw.get("batch"), where),
        replicas=_positive_int(raw, "replicas", 1, where),
        max_attempts=_positive_int(raw, "max_attempts", 3, where),
        nice=_nice(raw.get("nice", 0), where),
        line=raw.get("__line__"),
    )


def _nice(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 19:
        raise ConfigError(
            f"{where}: nice must be a whole number from 0 (normal) to 19 (yields most), "
            f"got {value!r}"
        )
    return value


def _parse_retention(settings: Mapping[str, Any], where: str) -> RetentionPolicy | None:
    hours = settings.get("retention_hours")
    if hours is not None and (
        isinstance(hours, bool) or not isinstance(hours, int | float) or hours <= 0
    ):
        raise ConfigError(f"{where}: retention_hours must be a number > 0, got {hours!r}")
    count = (
        _positive_int(settings, "max_messages", 1, where) if "max_messages" in settings else None
    )
    if hours is None and count is None:
        return None
    return RetentionPolicy(max_age_s=None if hours is None else hours * 3600.0, max_messages=count)


def _topic_settings(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"partitions": value}  # `scans.raw: 4` is short for {partitions: 4}
    if value is None or isinstance(value, dict):
        return value or {}
    raise ConfigError(f"{where}: use {{partitions: N}} (or just N), got {value!r}")


def _parse_topics(raw: Any, file: Path) -> tuple[dict[str, int], dict[str, RetentionPolicy]]:
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: topics must map topic names to {{partitions: N}}")
    topics, retention = {}, {}
    for name, value in raw.items():
        if name == "__line__":
            continue
        where = f"{_at(file, raw)} topic {name!r}"
        settings = _topic_settings(value, where)
        _check_keys(settings, TOPIC_KEYS, "topic", where)
        topics[str(name)] = _positive_int(settings, "partitions", 1, where)
        policy = _parse_retention(settings, where)
        if policy is not None:
            retention[str(name)] = policy
    return topics, retention


def parse_pipeline(raw: Mapping[str, Any], file: Path) -> PipelineSpec:
    where = _at(file, raw)
    _check_keys(raw, PIPELINE_KEYS, "pipeline", where)
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ConfigError(f"{where}: the pipeline needs a 'name'")
    stages = raw.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{where}: the pipeline needs a non-empty list of 'stages'")
    topics, retention = _parse_topics(raw.get("topics"), file)
    app = raw.get("app")
    if app is not None and (not isinstance(app, str) or not app):
        raise ConfigError(f"{where}: 'app' names an installed application, e.g. app: myapp")
    return PipelineSpec(
        name=raw["name"],
        app=app,
        stages=tuple(_parse_stage(s, file) for s in stages),
        topics=topics,
        retention=retention,
        bus=str(raw.get("bus") or DEFAULT_BUS),
        store=str(raw.get("store") or DEFAULT_STORE),
        blobs=str(raw.get("blobs") or DEFAULT_BLOBS),
        claim_check_bytes=1024
        * _positive_int(raw, "claim_check_kb", DEFAULT_CLAIM_CHECK_BYTES // 1024, where),
        source=file,
    )


def _stage_where(stage: StageSpec) -> str:
    return f"line {stage.line}: " if stage.line else ""


def _has_cycle(spec: PipelineSpec) -> list[str] | None:
    """Return the topics of a cycle (topic -> stage -> topic ...) if there is one."""
    edges: dict[str, list[str]] = {}
    for stage in spec.stages:
        if stage.output:
            edges.setdefault(stage.input, []).append(stage.output)
    state: dict[str, int] = {}

    def visit(topic: str, path: list[str]) -> list[str] | None:
        state[topic] = 1
        for nxt in edges.get(topic, []):
            if state.get(nxt) == 1:
                return [*path, topic, nxt]
            if nxt not in state and (found := visit(nxt, [*path, topic])):
                return found
        state[topic] = 2
        return None

    for topic in list(edges):
        if topic not in state and (cycle := visit(topic, [])):
            return cycle
    return None


def validate(spec: PipelineSpec) -> None:
    """Check the wiring of a pipeline; raise :class:`ConfigError` listing every problem."""
    problems = wiring_problems(spec)
    if problems:
        raise ConfigError(
            _where(spec) + ("\n  " if len(problems) > 1 else "") + "\n  ".join(problems)
        )


def wiring_warnings(spec: PipelineSpec) -> list[str]:
    """What in a valid pipeline is likely a mistake (it runs as it is), one line each."""
    return [_where(spec) + warning for warning in unread_dead_letters(spec)]


def _where(spec: PipelineSpec) -> str:
    return f"{spec.source}: " if spec.source else ""


def wiring_problems(spec: PipelineSpec) -> list[str]:
    """Every wiring problem: duplicate stages, unknown steps, unfed topics, cycles."""
    problems: list[str] = []
    try:
        app_steps = app_named(spec.app).steps if spec.app else {}
    except ConfigError as exc:
        problems.append(str(exc))
        app_steps = {}
    names = [s.name for s in spec.stages]
    problems += [
        f"stage {n!r} is defined twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    produced = set(spec.topics) | {s.output for s in spec.stages if s.output}
    produced |= {f"{s.input}.dlq" for s in spec.stages}  # the workers write dead letters
    for stage in spec.stages:
        where = _stage_where(stage)
        if stage.input not in produced:
            hint = did_you_mean(stage.input, sorted(produced))
            problems.append(
                f"{where}stage {stage.name!r} reads topic {stage.input!r} that no stage writes "
                f"and that is not declared under 'topics'{hint}"
            )
        if stage.output and stage.output.endswith(".dlq"):
            problems.append(
                f"{where}stage {stage.name!r} writes {stage.output!r}: .dlq topics are the worker's"
            )
        for step in stage.steps:
            try:
                resolve_factory(step.ref, app_steps)
            except ConfigError as exc:
                line = f"line {step.line}: " if step.line else where
                problems.append(f"{line}stage {stage.name!r}: {exc}")
    cycle = _has_cycle(spec)
    if cycle:
        problems.append("topics form a cycle: " + " -> ".join(cycle))
    return problems


def unread_dead_letters(spec: PipelineSpec) -> list[str]:
    """A warning for each stage whose dead-letter topic no stage of the pipeline reads.

    Such dead letters pile up on the bus where nobody looks. Stages that themselves
    read a dead-letter topic are left out: a reader of their ``.dlq.dlq`` would need
    one of its own, without end.
    """
    read = {stage.input for stage in spec.stages}
    warnings = []
    for stage in spec.stages:
        dlq = f"{stage.input}.dlq"
        if stage.input.endswith(".dlq") or dlq in read:
            continue
        warnings.append(
            f"{_stage_where(stage)}stage {stage.name!r} dead-letters failing messages to "
            f"{dlq!r}, which no stage reads; add a stage reading it (input: {dlq}), e.g. "
            "with steps: [store_results] to keep them and their errors in the results store"
        )
    return warnings
