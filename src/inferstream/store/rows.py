"""Plain values going into and coming out of the results store.

Frozen dataclasses, so the API layer can serialise them as they are and tests can
compare them. Timestamps are microseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")

Role = Literal["champion", "shadow"]
OnConflict = Literal["ignore", "update"]
Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One model's prediction for one scan (champion in ``results``, else ``shadow_results``)."""

    id: str
    tenant: str
    label: str
    confidence: float
    scores: Mapping[str, float]
    model_name: str
    model_version: str
    created_at_us: int
    ingested_at_us: int
    stored_at_us: int
    latency_ms: float
    egg_id: str | None = None
    tray: str | None = None
    scanner: str | None = None
    lineage: Sequence[Mapping[str, Any]] = ()
    trace_id: str = ""
    status: str = "processed"

    def as_params(self) -> dict[str, Any]:
        """Bind parameters for an insert (lineage as a list so it serialises to JSON)."""
        params = {name: getattr(self, name) for name in RESULT_FIELDS}
        params["scores"] = dict(self.scores)
        params["lineage"] = [dict(step) for step in self.lineage]
        return params

    @classmethod
    def from_mapping(cls, row: Mapping[Any, Any]) -> ResultRow:
        values = {name: row[name] for name in RESULT_FIELDS}
        values["lineage"] = tuple(values["lineage"])
        return cls(**values)


RESULT_FIELDS = tuple(f.name for f in fields(ResultRow))


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A message a stage gave up on, with where it came from and why."""

    id: str
    tenant: str
    stage: str
    error_type: str
    message: str
    attempts: int
    topic: str
    partition: int
    offset: int
    at_us: int
    root_id: str = ""
    trace_id: str = ""

    def as_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in DEAD_LETTER_FIELDS}

    @classmethod
    def from_mapping(cls, row: Mapping[Any, Any]) -> DeadLetterRow:
        return cls(**{name: row[name] for name in DEAD_LETTER_FIELDS})


DEAD_LETTER_FIELDS = tuple(f.name for f in fields(DeadLetterRow))


@dataclass(frozen=True, slots=True)
class Feedback:
    """Ground truth for one egg, e.g. from the hatchery."""

    tenant: str
    egg_id: str
    label: str
    source: str
    at_us: int


@dataclass(frozen=True, slots=True)
class ResultFilter:
    """Filters for :meth:`ResultsStore.list_results`; ``None`` means "any".

    ``since_us``/``until_us`` bound the scan time (``created_at_us``), half-open.
    """

    egg_id: str | None = None
    tray: str | None = None
    scanner: str | None = None
    label: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    since_us: int | None = None
    until_us: int | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next one (None: last page)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """Prediction mix and pace of one group of records (the eggs' tray).

    ``throughput_per_s`` is count / (last stored - first stored); None below two
    distinct timestamps. ``female_ratio`` is female / count; None when empty.
    """

    tenant: str
    group: str
    count: int
    counts: dict[str, int] = field(default_factory=dict)
    female_ratio: float | None = None
    mean_confidence: float | None = None
    first_stored_at_us: int | None = None
    last_stored_at_us: int | None = None
    throughput_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class ModelAccuracy:
    """How often one model version agreed with the ground truth that has arrived."""

    model_name: str
    model_version: str
    role: Role
    labelled: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.labelled if self.labelled else 0.0
