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
    """One stored record with the champion prediction of its application's first head.

    ``id`` is the record's own (deterministic) id; ``root_id`` the ingested item it
    came from (a scan), ``parent_id`` the record it was made from in a fan-out.
    ``subject``, ``group`` and ``source`` are the values of the attributes the
    application names so; ``attributes`` holds every declared attribute (a sensitive
    one as stored: sealed, until the store that read the row opens it).
    """

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
    subject: str | None = None
    group: str | None = None
    source: str | None = None
    lineage: Sequence[Mapping[str, Any]] = ()
    trace_id: str = ""
    status: str = "processed"
    app: str = ""
    root_id: str = ""
    parent_id: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    head: str = ""
    #: Sensitive attributes read as null, each with why (``shredded``, ``no_key``,
    #: ``unauthentic``: :mod:`inferstream.store.sealed_attributes`); not a column.
    withheld: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.root_id:  # a record made from nothing else is its own root
            object.__setattr__(self, "root_id", self.id)

    def as_params(self) -> dict[str, Any]:
        """Bind parameters for an insert (JSON columns as plain lists and dicts)."""
        params = {_COLUMN.get(name, name): getattr(self, name) for name in RESULT_FIELDS}
        params["scores"] = dict(self.scores)
        params["lineage"] = [dict(step) for step in self.lineage]
        params["attributes"] = dict(self.attributes)
        return params

    @classmethod
    def from_mapping(cls, row: Mapping[Any, Any], opened: Opened | None = None) -> ResultRow:
        """The row as stored; ``opened``: its attributes and withheld ones instead, as
        :mod:`~inferstream.store.sealed_attributes` opened them."""
        values = {name: row[_COLUMN.get(name, name)] for name in RESULT_FIELDS}
        values["lineage"] = tuple(values["lineage"])
        if opened is not None:
            values["attributes"], values["withheld"] = opened
        return cls(**values)

    def champion(self) -> PredictionRow:
        """The prediction this row carries, as a row of ``predictions``."""
        return PredictionRow(
            tenant=self.tenant, record_id=self.id, head=self.head, role="champion",
            model_name=self.model_name, model_version=self.model_version, label=self.label,
            confidence=self.confidence, scores=self.scores, predicted_at_us=self.stored_at_us,
            stored_at_us=self.stored_at_us,
        )  # fmt: skip


#: A record's attributes with its sealed ones opened, and those withheld (with why).
Opened = tuple[Mapping[str, Any], Mapping[str, str]]
#: Field -> column where they differ ("group" is an SQL keyword).
_COLUMN = {"group": "group_key"}
RESULT_FIELDS = tuple(f.name for f in fields(ResultRow) if f.name != "withheld")


@dataclass(frozen=True, slots=True)
class PredictionRow:
    """One model's answer for one head of one record (champion or shadow)."""

    tenant: str
    record_id: str
    head: str
    role: Role
    model_name: str
    model_version: str
    label: str
    confidence: float
    scores: Mapping[str, float]
    predicted_at_us: int
    stored_at_us: int

    def as_params(self) -> dict[str, Any]:
        params = {name: getattr(self, name) for name in PREDICTION_FIELDS}
        params["scores"] = dict(self.scores)
        return params

    @classmethod
    def from_mapping(cls, row: Mapping[Any, Any]) -> PredictionRow:
        return cls(**{name: row[name] for name in PREDICTION_FIELDS})


PREDICTION_FIELDS = tuple(f.name for f in fields(PredictionRow))


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
    """Ground truth for one subject and head of an application (a label that came late)."""

    tenant: str
    app: str
    subject: str
    head: str
    label: str
    source: str
    at_us: int


@dataclass(frozen=True, slots=True)
class ResultFilter:
    """Filters for :meth:`ResultsStore.list_results`; ``None`` means "any".

    ``since_us``/``until_us`` bound the scan time (``created_at_us``), half-open.
    """

    subject: str | None = None
    group: str | None = None
    source: str | None = None
    root_id: str | None = None
    app: str | None = None
    label: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    since_us: int | None = None
    until_us: int | None = None
    #: Declared attributes to match exactly, typed (``{"crop": 2}``), read from the
    #: record's ``attributes``.
    attributes: Mapping[str, str | int | float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next one (None: last page)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """Prediction mix and pace of one group of records (one value of the application's group).

    ``throughput_per_s`` is count / (last stored - first stored); None below two
    distinct timestamps. ``ratio`` is the share of the label asked for (an
    application's ratio); None when empty or none was asked for.
    """

    tenant: str
    group: str
    count: int
    counts: dict[str, int] = field(default_factory=dict)
    ratio: float | None = None
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
