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
from inferstream.event_time import DEFAULT_MAX_CLOCK_SKEW_S
from inferstream.pipeline.operators import idle_ms, parse_join, parse_window
from inferstream.pipeline.spec import (
    DEFAULT_BLOBS,
    DEFAULT_BUS,
    DEFAULT_STORE,
    BatchSettings,
    PipelineSpec,
    PromotionSpec,
    RetrainSpec,
    StageSpec,
    StepSpec,
    did_you_mean,
    file_prefix,
    line_prefix,
)
from inferstream.routing import parse_predicate, parse_routes, topic_list
from inferstream.steps import resolve_factory

PIPELINE_KEYS = {
    "name", "app", "bus", "store", "blobs", "claim_check_kb", "max_clock_skew_s", "topics",
    "stages", "promotion", "retraining", "settings",
}  # fmt: skip
RETRAIN_KEYS = {"model", "learner", "alias", "head", "min_new_labels", "every_s", "labels_from"}
PROMOTION_KEYS = {
    "model", "champion", "challenger", "head", "min_labels", "alpha", "margin",
    "demote_below", "labels_from",
}  # fmt: skip
STAGE_KEYS = {
    "name",
    "input",
    "output",
    "routes",
    "start",
    "steps",
    "join",
    "window",
    "batch",
    "replicas",
    "max_attempts",
    "nice",
}
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


def _max_clock_skew(raw: Mapping[str, Any], where: str) -> float:
    value = raw.get("max_clock_skew_s", DEFAULT_MAX_CLOCK_SKEW_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(
            f"{where}: max_clock_skew_s must be a number of seconds above 0 (how far ahead "
            f"of this host's clock a producer's event time may be), got {value!r}"
        )
    return float(value)


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
        special = ("step", "__line__", "when", "unless")
        params = {k: _without_lines(v) for k, v in raw.items() if k not in special}
        conditions = {
            key: parse_predicate(raw[key], f"{where} step {raw['step']!r} {key}")
            for key in ("when", "unless")
            if key in raw
        }
        return StepSpec(ref=raw["step"], params=params, line=raw.get("__line__"), **conditions)
    raise ConfigError(
        f"{where}: a step is a name ('decode_dicom') or a mapping with 'step' and its "
        f"parameters ({{step: classify, model: my_model}}), got {raw!r}"
    )


def _parse_stage(raw: Any, file: Path) -> StageSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: each stage must be a mapping with name, input and steps")
    where = _at(file, raw)
    _check_keys(raw, STAGE_KEYS, "stage", where)
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ConfigError(f"{where}: stage needs a 'name' (a non-empty string)")
    if "input" not in raw:
        raise ConfigError(f"{where}: stage {raw['name']!r} needs an 'input' topic")
    join = parse_join(raw.get("join"), where)
    window = parse_window(raw.get("window"), where)
    if join is not None and window is not None:
        raise ConfigError(f"{where}: a stage has a join or a window, not both; use two stages")
    return StageSpec(
        name=raw["name"],
        input=_one_or_many(topic_list(raw["input"], "input", where)),
        steps=_parse_steps(raw, where, operator=join is not None or window is not None),
        join=join,
        window=window,
        idle_ms=idle_ms(raw, where),
        start=_start(raw.get("start", "earliest"), where),
        batch=_parse_batch(raw.get("batch"), where),
        replicas=_positive_int(raw, "replicas", 1, where),
        max_attempts=_positive_int(raw, "max_attempts", 3, where),
        nice=_nice(raw.get("nice", 0), where),
        line=raw.get("__line__"),
        **_parse_destinations(raw, where),
    )


def _one_or_many(names: tuple[str, ...]) -> str | tuple[str, ...]:
    return names[0] if len(names) == 1 else names


def _parse_steps(raw: Mapping[str, Any], where: str, *, operator: bool) -> tuple[StepSpec, ...]:
    """The stage's steps; a join or window stage may have none (the operator is its work)."""
    steps = raw.get("steps", [] if operator else None)
    if not isinstance(steps, list) or (not steps and not operator):
        raise ConfigError(f"{where}: stage {raw['name']!r} needs a non-empty list of steps")
    return tuple(_parse_step(s, where) for s in steps)


def _parse_destinations(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``output`` (one topic or a list: broadcast) or ``routes``; neither makes a sink."""
    if "output" in raw and "routes" in raw:
        raise ConfigError(
            f"{where}: use 'output' (every output to these topics) or 'routes' (by a "
            "predicate), not both"
        )
    if "routes" in raw:
        routes, otherwise = parse_routes(raw["routes"], where)
        return {"routes": routes, "otherwise": otherwise}
    if raw.get("output") is None:
        return {}
    return {"output": _one_or_many(topic_list(raw["output"], "output", where))}


def _start(value: Any, where: str) -> Any:
    if value not in ("earliest", "latest"):
        raise ConfigError(
            f"{where}: start must be 'earliest' (a new group reads the retained log from its "
            f"oldest message) or 'latest' (only new messages), got {value!r}"
        )
    return value


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
        return {"partitions": value}  # `images.raw: 4` is short for {partitions: 4}
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


def _parse_promotions(raw: Any, file: Path) -> tuple[PromotionSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{file}: promotion is a list of policies, e.g. - model: NAME")
    made = []
    for entry in raw:
        where = f"{_at(file, entry) if isinstance(entry, dict) else file} promotion"
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise ConfigError(f"{where}: each policy names its model (model: NAME)")
        _check_keys(entry, PROMOTION_KEYS, "promotion policy", where)
        numbers = {}
        for key, low, high in (
            ("alpha", 0.0, 1.0),
            ("margin", 0.0, 1.0),
            ("demote_below", 0.0, 1.0),
        ):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not low <= value <= high):  # fmt: skip
                raise ConfigError(f"{where}: {key} must be a number from {low} to {high}")
            numbers[key] = value
        tenants = entry.get("labels_from", [])
        if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
            raise ConfigError(f"{where}: labels_from is a list of tenant names")
        made.append(
            PromotionSpec(
                model=entry["model"],
                champion=str(entry.get("champion", "champion")),
                challenger=str(entry.get("challenger", "challenger")),
                head=str(entry.get("head", "")),
                min_labels=_positive_int(entry, "min_labels", 200, where),
                alpha=float(numbers["alpha"] if numbers["alpha"] is not None else 0.05),
                margin=float(numbers["margin"] or 0.0),
                demote_below=numbers["demote_below"],
                labels_from=tuple(tenants),
            )
        )
    return tuple(made)


def _parse_retraining(raw: Any, file: Path) -> tuple[RetrainSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(
            f"{file}: retraining is a list of models, e.g. - {{model: NAME, learner: LEARNER}}"
        )
    made = []
    for entry in raw:
        where = f"{_at(file, entry) if isinstance(entry, dict) else file} retraining"
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(key), str) and entry[key] for key in ("model", "learner")
        ):
            raise ConfigError(
                f"{where}: each entry names its model and the application's learner "
                "(model: NAME, learner: LEARNER)"
            )
        _check_keys(entry, RETRAIN_KEYS, "retraining entry", where)
        every = entry.get("every_s", 30.0)
        if isinstance(every, bool) or not isinstance(every, int | float) or not every > 0:
            raise ConfigError(f"{where}: every_s must be a number of seconds above 0")
        tenants = entry.get("labels_from", [])
        if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
            raise ConfigError(f"{where}: labels_from is a list of tenant names")
        made.append(
            RetrainSpec(
                model=entry["model"],
                learner=entry["learner"],
                alias=str(entry.get("alias", "challenger")),
                head=str(entry.get("head", "")),
                min_new_labels=_positive_int(entry, "min_new_labels", 200, where),
                every_s=float(every),
                labels_from=tuple(tenants),
            )
        )
    return tuple(made)


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
    settings = raw.get("settings") or {}
    if not isinstance(settings, dict) or (settings and app is None):
        raise ConfigError(
            f"{where}: 'settings' is a mapping of the application's own settings (see its "
            "docs), beside an 'app:'"
        )
    return PipelineSpec(
        name=raw["name"],
        app=app,
        settings=_without_lines(settings),
        stages=tuple(_parse_stage(s, file) for s in stages),
        topics=topics,
        retention=retention,
        bus=str(raw.get("bus") or DEFAULT_BUS),
        store=str(raw.get("store") or DEFAULT_STORE),
        blobs=str(raw.get("blobs") or DEFAULT_BLOBS),
        claim_check_kb=(
            _positive_int(raw, "claim_check_kb", 1, where) if "claim_check_kb" in raw else None
        ),
        max_clock_skew_s=_max_clock_skew(raw, where),
        source=file,
        promotions=_parse_promotions(raw.get("promotion"), file),
        retraining=_parse_retraining(raw.get("retraining"), file),
    )


def _has_cycle(spec: PipelineSpec) -> list[str] | None:
    """Return the topics of a cycle (topic -> stage -> topic ...) if there is one."""
    edges: dict[str, list[str]] = {}
    for stage in spec.stages:
        for topic in stage.inputs:
            edges.setdefault(topic, []).extend(stage.router.all_topics())
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
            file_prefix(spec) + ("\n  " if len(problems) > 1 else "") + "\n  ".join(problems)
        )


def wiring_problems(spec: PipelineSpec) -> list[str]:
    """Every wiring problem: duplicate stages, unknown steps, unfed topics, cycles."""
    problems: list[str] = []
    try:
        app = app_named(spec.app) if spec.app else None
    except ConfigError as exc:
        problems.append(str(exc))
        app = None
    if app is not None:
        try:
            app.with_settings(spec.settings)
        except ConfigError as exc:
            problems.append(f"settings: {exc}")
    app_steps = app.steps if app else {}
    for retrain in spec.retraining:
        learners = app.learners if app else {}
        if retrain.learner not in learners:
            known = ", ".join(sorted(learners)) or "none"
            problems.append(
                f"retraining of {retrain.model!r} names learner {retrain.learner!r}, which the "
                f"pipeline's application does not declare (its learners: {known})"
            )
    names = [s.name for s in spec.stages]
    problems += [
        f"stage {n!r} is defined twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    produced = produced_topics(spec)
    for stage in spec.stages:
        problems += _stage_problems(spec, stage, produced, app_steps)
    cycle = _has_cycle(spec)
    if cycle:
        problems.append("topics form a cycle: " + " -> ".join(cycle))
    return problems


def produced_topics(spec: PipelineSpec) -> set[str]:
    """Topics something writes: declared ones, stage outputs, dead letters and late events."""
    produced = set(spec.topics)
    for stage in spec.stages:
        produced |= stage.writes()
    return produced


def _stage_problems(
    spec: PipelineSpec, stage: StageSpec, produced: set[str], app_steps: Mapping[str, str]
) -> list[str]:
    where = line_prefix(stage)
    problems = []
    for topic in stage.inputs:
        if topic not in produced:
            hint = did_you_mean(topic, sorted(produced))
            problems.append(
                f"{where}stage {stage.name!r} reads topic {topic!r} that no stage writes "
                f"and that is not declared under 'topics'{hint}"
            )
    for topic in stage.router.all_topics():
        if topic.endswith((".dlq", ".late")):
            problems.append(
                f"{where}stage {stage.name!r} writes {topic!r}: .dlq and .late topics are "
                "the worker's"
            )
    widths = {spec.partitions(topic) for topic in stage.inputs}
    if stage.stateful and len(widths) > 1:
        problems.append(
            f"{where}stage {stage.name!r} keeps state over {', '.join(stage.inputs)}, which "
            "have different partition counts; give them the same 'partitions' so one key "
            "meets the same worker on every input"
        )
    for step in stage.steps:
        try:
            resolve_factory(step.ref, app_steps)
        except ConfigError as exc:
            line = f"line {step.line}: " if step.line else where
            problems.append(f"{line}stage {stage.name!r}: {exc}")
    return problems
