"""Where a stage's outputs go: every output topic (broadcast), or routes with predicates.

A stage's ``output`` may name one topic or several; each output envelope goes to
all of them. Instead, ``routes`` send each output to the topics of the first route
whose ``when`` holds, else to ``otherwise``::

    routes:
      - when: {label: defect, min_confidence: 0.9}
        to: items.defect
      - when: {attributes: {site: [north, south]}}
        to: [items.north, audit]
      - otherwise: items.review       # or `drop` to discard what no route takes

A predicate is declarative on purpose (``validate`` checks it; anything richer is a
step that sets an attribute to route on). Its conditions must all hold:

- ``label``: the acting (champion) prediction's label, one value or a list;
- ``head``: which prediction head ``label`` and the confidences read (default: the
  first prediction);
- ``min_confidence`` / ``max_confidence``: bounds on that prediction's score
  (``min`` inclusive, ``max`` exclusive), from 0 to 1;
- ``attributes``: attribute name -> a value or a list of values; ``"*"`` means present;
- ``source`` and ``content_type``: a value or a list.

An output that no route takes and with no ``otherwise`` is dead-lettered with that
reason: a silent drop is never the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inferstream.envelope import Envelope, ModelRole, Prediction
from inferstream.errors import ConfigError

#: ``otherwise: drop`` discards outputs no route takes (counted, not dead-lettered).
DROP = "drop"

PREDICATE_KEYS = (
    "label",
    "head",
    "min_confidence",
    "max_confidence",
    "attributes",
    "source",
    "content_type",
)


@dataclass(frozen=True)
class Predicate:
    """Conditions on one envelope; all must hold. Empty conditions always hold."""

    labels: frozenset[str] | None = None
    head: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    attributes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    sources: frozenset[str] | None = None
    content_types: frozenset[str] | None = None

    def holds(self, env: Envelope) -> bool:
        if self.sources is not None and env.source not in self.sources:
            return False
        if self.content_types is not None and env.payload.content_type not in self.content_types:
            return False
        for name, allowed in self.attributes.items():
            value = env.attributes.get(name)
            if value is None or ("*" not in allowed and value not in allowed):
                return False
        if self.labels is None and self.min_confidence is None and self.max_confidence is None:
            return True
        return self._prediction_holds(acting_prediction(env, self.head))

    def _prediction_holds(self, prediction: Prediction | None) -> bool:
        if prediction is None:
            return False
        if self.labels is not None and prediction.label not in self.labels:
            return False
        score = prediction.scores.get(prediction.label, max(prediction.scores.values(), default=0))
        if self.min_confidence is not None and score < self.min_confidence:
            return False
        return self.max_confidence is None or score < self.max_confidence


def acting_prediction(env: Envelope, head: str | None = None) -> Prediction | None:
    """The prediction acted on: the first champion (not shadow) one, of ``head`` if given."""
    for prediction in env.predictions:
        if prediction.role == ModelRole.MODEL_ROLE_SHADOW:
            continue
        if head is None or prediction.head == head:
            return prediction
    return None


@dataclass(frozen=True)
class Route:
    when: Predicate
    to: tuple[str, ...]


@dataclass(frozen=True)
class Router:
    """Picks the topics of each output: broadcast ``outputs``, or ``routes`` then ``otherwise``."""

    outputs: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    #: Topics for outputs no route takes; ``(DROP,)`` discards them; empty dead-letters.
    otherwise: tuple[str, ...] = ()

    def topics(self, env: Envelope) -> tuple[str, ...]:
        """Where ``env`` goes; empty means no route took it (the caller dead-letters it)."""
        if not self.routes:
            # A stage with no output is a sink (store_results): its outputs end there.
            return self.outputs or (DROP,)
        for route in self.routes:
            if route.when.holds(env):
                return route.to
        return self.otherwise

    def all_topics(self) -> tuple[str, ...]:
        """Every topic this router can write, in order of appearance, without duplicates."""
        names = [*self.outputs, *(t for r in self.routes for t in r.to), *self.otherwise]
        return tuple(dict.fromkeys(n for n in names if n != DROP))

    @property
    def is_sink(self) -> bool:
        return not self.outputs and not self.routes


def topic_list(raw: Any, what: str, where: str) -> tuple[str, ...]:
    """One topic name or a non-empty list of them, as a tuple."""
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{where}: {what} must be a topic name or a list of them, got {raw!r}")
    return tuple(names)


def parse_routes(raw: Any, where: str) -> tuple[tuple[Route, ...], tuple[str, ...]]:
    """``routes:`` from a pipeline file: the routes, and the ``otherwise`` topics."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: routes must be a list of {{when: ..., to: ...}} entries")
    routes: list[Route] = []
    otherwise: tuple[str, ...] = ()
    for index, entry in enumerate(raw):
        at = f"{where} route {index + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: a route is a mapping {{when: ..., to: topic}}")
        keys = set(entry) - {"__line__"}
        if keys == {"otherwise"}:
            if index != len(raw) - 1:
                raise ConfigError(f"{at}: 'otherwise' must be the last route")
            otherwise = topic_list(entry["otherwise"], "otherwise", at)
            continue
        if keys != {"when", "to"}:
            raise ConfigError(
                f"{at}: a route has exactly 'when' and 'to' (or only 'otherwise'), got "
                f"{sorted(keys)}"
            )
        routes.append(Route(parse_predicate(entry["when"], at), topic_list(entry["to"], "to", at)))
    if not routes:
        raise ConfigError(f"{where}: routes need at least one {{when: ..., to: ...}} entry")
    return tuple(routes), otherwise


def parse_predicate(raw: Any, where: str) -> Predicate:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'when' must be a mapping, e.g. {{label: defect}}")
    raw = {k: v for k, v in raw.items() if k != "__line__"}
    unknown = sorted(set(raw) - set(PREDICATE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown condition(s) {unknown} in 'when'; use {', '.join(PREDICATE_KEYS)}"
        )
    head = raw.get("head")
    if head is not None and not isinstance(head, str):
        raise ConfigError(f"{where}: head must be the name of a prediction head")
    return Predicate(
        labels=_values(raw, "label", where),
        head=head,
        min_confidence=_confidence(raw, "min_confidence", where),
        max_confidence=_confidence(raw, "max_confidence", where),
        attributes=_attribute_conditions(raw.get("attributes"), where),
        sources=_values(raw, "source", where),
        content_types=_values(raw, "content_type", where),
    )


def _values(raw: Mapping[str, Any], key: str, where: str) -> frozenset[str] | None:
    value = raw.get(key)
    if value is None:
        return None
    values = [value] if isinstance(value, str | int | float) else value
    if not isinstance(values, list) or not values or isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be a value or a non-empty list, got {value!r}")
    return frozenset(str(v) for v in values)


def _confidence(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{where}: {key} must be a number from 0 to 1, got {value!r}")
    return float(value)


def _attribute_conditions(raw: Any, where: str) -> dict[str, frozenset[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: attributes must map names to a value or a list of values")
    conditions = {}
    for name, value in raw.items():
        if name == "__line__":
            continue
        allowed = _values({"value": value}, "value", f"{where} attribute {name!r}")
        if allowed is None:
            raise ConfigError(f"{where}: attribute {name!r} needs a value, a list or '*'")
        conditions[str(name)] = allowed
    return conditions
