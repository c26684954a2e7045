"""``join:`` and ``window:`` of a stage, from a pipeline file into the operators' specs.

The specs themselves (and their checks) live with the operators in
:mod:`inferstream.dataflow`; this module only turns the file's mapping into keyword
arguments, so a misspelt setting is reported with its line like every other one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from inferstream.dataflow.join import JoinSpec
from inferstream.dataflow.window import WindowSpec
from inferstream.errors import ConfigError
from inferstream.pipeline.spec import DEFAULT_IDLE_MS, did_you_mean

S = TypeVar("S")


def parse_join(raw: Any, where: str) -> JoinSpec | None:
    """``join: {by: parent_id, expect: 5, timeout_ms: 30000, mode: outer}``."""
    if raw is None:
        return None
    fields = _fields(raw, JoinSpec, "join", where)
    if isinstance(fields.get("branches"), list):
        fields["branches"] = tuple(str(b) for b in fields["branches"])
    return _build(JoinSpec, fields, "join", where)


def parse_window(raw: Any, where: str) -> WindowSpec | None:
    """``window: {kind: tumbling, size_ms: 10000, lateness_ms: 2000, keep: all}``."""
    if raw is None:
        return None
    return _build(WindowSpec, _fields(raw, WindowSpec, "window", where), "window", where)


def idle_ms(stage: Mapping[str, Any], where: str) -> float:
    """``idle_ms`` of a stage's join or window: how long a caught-up input may stay
    quiet before its watermark follows the clock (so the last window closes)."""
    operator = stage.get("join") or stage.get("window") or {}
    value = operator.get("idle_ms", DEFAULT_IDLE_MS) if isinstance(operator, Mapping) else 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}: idle_ms must be a number of milliseconds > 0, got {value!r}")
    return float(value)


def _fields(raw: Any, spec: type, what: str, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: {what} must be a mapping of its settings")
    allowed = sorted(f.name for f in dataclasses.fields(spec))
    fields = {}
    for key, value in raw.items():
        if key in ("__line__", "idle_ms"):
            continue
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown {what} setting {key!r}{did_you_mean(key, allowed)}; "
                f"{what} takes {', '.join(allowed)}"
            )
        fields[key] = value
    return fields


def _build(spec: Callable[..., S], fields: dict[str, Any], what: str, where: str) -> S:
    try:
        return spec(**fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {what}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"{where}: {what}: {exc}") from exc
