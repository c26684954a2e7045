"""The JSON bodies of the API (pydantic), built from the store's frozen rows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from inferstream.store import GroupSummary, ModelAccuracy, ResultRow


class Result(BaseModel):
    id: str
    label: str
    confidence: float
    scores: dict[str, float]
    model_name: str
    model_version: str
    egg_id: str | None
    tray: str | None
    scanner: str | None
    created_at_us: int
    ingested_at_us: int
    stored_at_us: int
    latency_ms: float
    lineage: list[dict[str, Any]]
    trace_id: str

    @classmethod
    def of(cls, row: ResultRow) -> Result:
        # model_construct: the store's rows are typed already, and validating 50 of them
        # per page was an eighth of the API's CPU under the read benchmark.
        values = {name: getattr(row, name) for name in _RESULT_FIELDS}
        values["scores"] = dict(row.scores)
        values["lineage"] = [dict(step) for step in row.lineage]
        return cls.model_construct(**values)


_RESULT_FIELDS = tuple(Result.model_fields)


class DeadLetter(BaseModel):
    stage: str
    error_type: str
    reason: str
    attempts: int
    at_us: int


class ScanStatus(BaseModel):
    id: str
    status: Literal["queued", "processed", "dead_lettered"]
    content_type: str
    received_at_us: int
    trace_id: str
    egg_id: str | None
    tray: str | None
    scanner: str | None
    result: Result | None = None
    shadows: list[Result] = Field(default_factory=list)
    dead_letter: DeadLetter | None = None


class ResultPage(BaseModel):
    items: list[Result]
    next_cursor: str | None


class TraySummary(BaseModel):
    tray: str
    count: int
    counts: dict[str, int]
    female_ratio: float | None
    mean_confidence: float | None
    first_stored_at_us: int | None
    last_stored_at_us: int | None
    throughput_per_s: float | None

    @classmethod
    def of(cls, summary: GroupSummary) -> TraySummary:
        values = {name: getattr(summary, name) for name in cls.model_fields if name != "tray"}
        return cls(tray=summary.group, **values)


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
    egg_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:^+-]{0,63}$")
    label: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    source: str = Field(default="manual", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class FeedbackOut(BaseModel):
    egg_id: str
    label: str
    source: str
    at_us: int
