"""Read a pipeline file: YAML with line numbers and ``${VAR}`` from the environment.

``${NAME}`` and ``${NAME:-default}`` in a value are replaced from the environment,
so one file runs on one machine or on a cluster by changing variables only. A value
that is only a reference takes the type of what it expands to (``replicas: ${R:-2}``
is the number 2) unless it is quoted (``version: "${V:-1.0}"`` stays a string).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from inferstream.errors import ConfigError
from inferstream.pipeline.parse import parse_pipeline, validate
from inferstream.pipeline.spec import PipelineSpec

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
        if _retyped(value) and expanded != value and expanded:
            # `replicas: ${REPLICAS:-2}` should be the number 2, as if written so; a value
            # that is not a YAML scalar (`*x`, `{a`, found by fuzzing) stays the text it is.
            try:
                retyped = yaml.safe_load(expanded)
            except yaml.YAMLError:
                return expanded
            return retyped if isinstance(retyped, int | float | bool) else expanded
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
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline file {file}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # (found by fuzzing)
        raise ConfigError(
            f"{file}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
            "save the pipeline file as UTF-8"
        ) from exc
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: a pipeline file must be a mapping with 'name' and 'stages'")
    spec = parse_pipeline(_expand_env(raw, file), file)
    validate(spec)
    return spec
