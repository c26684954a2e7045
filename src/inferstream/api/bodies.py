"""The JSON bodies of the API (pydantic), built from the store's frozen rows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from inferstream.store import GroupSummary, ModelAccuracy, PredictionRow, ResultRow


class Result(BaseModel):
    """One stored record with the champion prediction of its application's first head."""

    id: str
    root_id: str = Field(description="the ingested item (scan) the record was made from")
    parent_id: str | None = Field(description="the record it was made from in a fan-out")
    app: str
    subject: str | None = Field(description="what the record is about (the application's subject)")
    group: str | None = Field(description="the group it belongs to (the application's group)")
    source: str | None = Field(description="the device it came from (the application's source)")
    attributes: dict[str, Any]
    head: str
    label: str
    confidence: float
    scores: dict[str, float]
    model_name: str
    model_version: str
    created_at_us: int
    ingested_at_us: int
    stored_at_us: int
    latency_ms: float
    lineage: list[dict[str, Any]]
    trace_id: str
    shared_from: str | None = Field(
        default=None,
        description="the tenant that shared this record with yours (a sharing grant); "
        "null for your own records",
    )
    withheld: dict[str, str] = Field(
        default_factory=dict,
        description="sensitive attributes given as null, each with why: shredded (the "
        "tenant's keys were crypto-shredded), no_key (the API has no key-encryption key) "
        "or unauthentic (the stored value was changed or copied from another record)",
    )

    @classmethod
    def of(cls, row: ResultRow, shared_from: str | None = None) -> Result:
        # model_construct: the store's rows are typed already, and validating 50 of them
        # per page was an eighth of the API's CPU under the read benchmark.
        values = {name: getattr(row, name) for name in _RESULT_FIELDS}
        values["scores"] = dict(row.scores)
        values["attributes"] = dict(row.attributes)
        values["lineage"] = [dict(step) for step in row.lineage]
        values["withheld"] = dict(row.withheld)
        return cls.model_construct(**values, shared_from=shared_from)


class PredictionOut(BaseModel):
    """One model's answer for one head of a record."""

    head: str
    role: str
    model_name: str
    model_version: str
    label: str
    confidence: float
    scores: dict[str, float]
    predicted_at_us: int

    @classmethod
    def of(cls, row: PredictionRow) -> PredictionOut:
        values = {name: getattr(row, name) for name in cls.model_fields}
        return cls.model_construct(**{**values, "scores": dict(row.scores)})


_RESULT_FIELDS = tuple(name for name in Result.model_fields if name != "shared_from")


class DeadLetter(BaseModel):
    stage: str
    error_type: str
    reason: str
    attempts: int
    at_us: int


TRACE_URL_TEXT = (
    "its trace (trace_id) in the deployment's trace viewer (serve --trace-url); null when "
    "none is configured"
)


class ScanStatus(BaseModel):
    id: str
    status: Literal["queued", "processed", "dead_lettered"]
    content_type: str
    received_at_us: int
    trace_id: str
    subject: str | None
    group: str | None
    source: str | None
    result: Result | None = Field(default=None, description="the first record made from it")
    records: int = Field(default=0, description="records made from it (more than 1: a fan-out)")
    predictions: list[PredictionOut] = Field(
        default_factory=list, description="every prediction of that record, shadows too"
    )
    dead_letter: DeadLetter | None = None
    trace_url: str | None = Field(default=None, description=TRACE_URL_TEXT)


class ResultPage(BaseModel):
    items: list[Result]
    next_cursor: str | None


class GroupSummaryOut(BaseModel):
    group: str
    count: int
    counts: dict[str, int]
    ratio: float | None = Field(description="the share of the application's first ratio")
    mean_confidence: float | None
    first_stored_at_us: int | None
    last_stored_at_us: int | None
    throughput_per_s: float | None

    @classmethod
    def of(cls, summary: GroupSummary) -> GroupSummaryOut:
        return cls(**{name: getattr(summary, name) for name in cls.model_fields})


class Accuracy(BaseModel):
    model_name: str
    model_version: str
    role: str
    labelled: int
    correct: int
    accuracy: float

    @classmethod
    def of(cls, row: ModelAccuracy) -> Accuracy:
        return cls(**{name: getattr(row, name) for name in cls.model_fields})


class FeedbackIn(BaseModel):
    subject: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:^+-]{0,63}$",
        description="the value of the application's subject attribute",
    )
    label: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    head: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="default: the first head"
    )
    source: str = Field(default="manual", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class FeedbackOut(BaseModel):
    subject: str
    head: str
    label: str
    source: str
    at_us: int
