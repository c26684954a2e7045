"""Read routes: a scan's status and image, result listings, group summaries and CSV,
feedback (ground truth) and accuracy per model version.

Every query runs for the caller's tenant; the result listing, the group summary and
export, and a scan's image also show what sharing grants let it read of other tenants
(:mod:`inferstream.store.sharing` enforces them). Another tenant's id is simply not
found (404), never "forbidden", so ids do not leak across tenants.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from inferstream.api.auth import Principal, require
from inferstream.api.bodies import (
    Accuracy,
    DeadLetter,
    FeedbackIn,
    FeedbackOut,
    GroupSummaryOut,
    PredictionOut,
    Result,
    ResultPage,
    ScanStatus,
)
from inferstream.api.errors import BadRequest, Gone, NotFound
from inferstream.api.permissions import roles_for
from inferstream.api.services import services_of
from inferstream.codecs import render_png
from inferstream.envelope import BlobRef
from inferstream.errors import BlobError, InvalidInput, TenantShredded
from inferstream.store import ResultFilter
from inferstream.store.queries import CURSOR_PATTERN
from inferstream.store.sharing import Sharing
from inferstream.tracing import trace_link

router = APIRouter(tags=["queries"])
GroupPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:^+-]{0,63}$")]
IdText = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:^+-]{0,63}$")]


def guard(route: str) -> Any:
    """The dependency enforcing ``route``'s row of the permission matrix."""
    return Depends(require(*roles_for(route)))


@router.get("/v1/scans/{scan_id}", response_model=ScanStatus)
def get_scan(
    scan_id: str,
    request: Request,
    principal: Annotated[Principal, guard("GET /v1/scans/{scan_id}")],
) -> ScanStatus:
    """Status (queued, processed, dead_lettered with the reason), prediction, lineage."""
    state = services_of(request)
    record = state.accounts.find_scan(principal.tenant, scan_id)
    if record is not None:
        status = ScanStatus(
            id=scan_id, status="queued", content_type=record.content_type,
            received_at_us=record.received_at_us, trace_id=record.trace_id,
            subject=record.subject, group=record.group, source=record.device,
        )  # fmt: skip
    made = state.store.results_of_root(principal.tenant, scan_id)
    if record is None and made:  # produced straight to the bus, never through the API
        first = made[0]
        status = ScanStatus(
            id=scan_id, status="queued", content_type="", received_at_us=first.ingested_at_us,
            trace_id=first.trace_id, subject=first.subject, group=first.group,
            source=first.source,
        )  # fmt: skip
    elif record is None:
        raise NotFound(f"no scan {scan_id!r} in your tenant")
    status.trace_url = trace_link(state.settings.trace_url, status.trace_id)
    if made:
        status.status, status.result, status.records = "processed", Result.of(made[0]), len(made)
        answers = state.store.list_predictions(principal.tenant, made[0].id)
        status.predictions = [PredictionOut.of(answer) for answer in answers]
        return status
    letter = state.accounts.dead_letter_of(principal.tenant, scan_id)
    if letter is not None:
        status.status = "dead_lettered"
        status.dead_letter = DeadLetter(
            stage=letter["stage"],
            error_type=letter["error_type"],
            reason=letter["message"],
            attempts=letter["attempts"],
            at_us=letter["at_us"],
        )
    return status


@router.get(
    "/v1/scans/{scan_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the scan as PNG"}},
)
def get_scan_image(
    scan_id: str,
    request: Request,
    principal: Annotated[Principal, guard("GET /v1/scans/{scan_id}/image")],
) -> Response:
    """The scan rendered as an 8-bit PNG (16-bit scans are windowed): your tenant's, or
    another's whose records a sharing grant lets you read with their images."""
    state = services_of(request)
    owner = principal.tenant
    record = state.accounts.find_scan(owner, scan_id)
    if record is None:
        owner = _image_sharer(state.store, principal.tenant, scan_id) or owner
        record = state.accounts.find_scan(owner, scan_id) if owner != principal.tenant else None
    if record is None or not record.blob_sha256:
        raise NotFound(f"no image of scan {scan_id!r} in your tenant")
    try:
        ref = BlobRef(uri="", sha256=record.blob_sha256, size=record.size)
        data = state.blobs.get(ref, owner)  # never bytes of a tenant that did not share them
    except TenantShredded as exc:
        raise Gone(str(exc)) from exc
    except BlobError as exc:
        raise NotFound(f"the bytes of scan {scan_id!r} are gone from the blob store") from exc
    try:
        png = render_png(data, record.content_type)
    except InvalidInput as exc:
        raise NotFound(f"the stored scan can no longer be rendered: {exc}") from exc
    return Response(png, media_type="image/png")


def _image_sharer(store: Any, viewer: str, scan_id: str) -> str | None:
    """The tenant that shares records of ``scan_id`` with ``viewer`` and their images
    (a live grant covering one of them allows images), or None."""
    found = Sharing(store).list_visible(viewer, ResultFilter(root_id=scan_id), limit=1000)
    return next((s.shared_from for s in found.items if s.shared_from and s.images), None)


class ResultQuery(BaseModel):
    """Filters and paging of ``GET /v1/results`` (query parameters)."""

    model_config = ConfigDict(extra="forbid")

    subject: IdText | None = None
    group: IdText | None = None
    source: IdText | None = None
    root_id: IdText | None = None
    label: IdText | None = None
    model_version: IdText | None = None
    min_confidence: float | None = Field(default=None, ge=0, le=1)
    max_confidence: float | None = Field(default=None, ge=0, le=1)
    since: datetime | None = None
    until: datetime | None = None
    cursor: str | None = Field(
        default=None,
        pattern=CURSOR_PATTERN,
        description="next_cursor of the previous page: <store time>.<hex of the last id>",
    )
    limit: int = Field(default=100, ge=1, le=1000)
    order: Literal["asc", "desc"] = "asc"


@router.get("/v1/results", response_model=ResultPage)
def list_results(
    query: Annotated[ResultQuery, Query()],
    request: Request,
    principal: Annotated[Principal, guard("GET /v1/results")],
) -> ResultPage:
    """Results of your tenant and those sharing grants let you read (each marked with
    its owner in ``shared_from``), filtered, oldest first; pass ``next_cursor`` for more."""
    filters = ResultFilter(
        subject=query.subject,
        group=query.group,
        source=query.source,
        root_id=query.root_id,
        label=query.label,
        model_version=query.model_version,
        min_confidence=query.min_confidence,
        max_confidence=query.max_confidence,
        since_us=_us(query.since),
        until_us=_us(query.until),
    )
    sharing = Sharing(services_of(request).store)
    page = sharing.list_visible(principal.tenant, filters, query.cursor, query.limit, query.order)
    items = [Result.of(seen.row, seen.shared_from) for seen in page.items]
    return ResultPage(items=items, next_cursor=page.next_cursor)


def _us(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise BadRequest(f"time {moment.isoformat()} has no time zone; add e.g. +00:00 or Z")
    return int(moment.timestamp() * 1_000_000)


class OwnerSummaryOut(GroupSummaryOut):
    """One owner's part of a group summary."""

    shared_from: str | None = Field(
        description="the tenant that shared these records with yours; null for your own"
    )


class SharedGroupSummaryOut(GroupSummaryOut):
    """A group's summary over every record you may read, with each owner's part."""

    by_owner: list[OwnerSummaryOut] = Field(
        description="your own records first (shared_from null), then each tenant that "
        "shares records of this group with yours; the top-level figures add them all up"
    )


@router.get("/v1/groups/{group}/summary", response_model=SharedGroupSummaryOut)
def group_summary(
    group: GroupPath,
    request: Request,
    principal: Annotated[Principal, guard("GET /v1/groups/{group}/summary")],
) -> SharedGroupSummaryOut:
    """Counts per label, the application's first ratio, mean confidence and
    throughput of one group of records: your own and those sharing grants let you read,
    added up, and per owner in ``by_owner``."""
    state = services_of(request)
    app = state.app  # a record carries the champion of the first head: ratios of it only
    head = app.first_head
    first = next((r for r in app.ratios if head and r.head == head.name), None)
    ratio = first.label if first else ""
    summary = Sharing(state.store).group_summary(principal.tenant, group, ratio)
    parts = [
        OwnerSummaryOut(**GroupSummaryOut.of(part).model_dump(), shared_from=owner)
        for owner, part in summary.parts
    ]
    return SharedGroupSummaryOut(**GroupSummaryOut.of(summary.total).model_dump(), by_owner=parts)


CSV_COLUMNS = (
    "id", "root_id", "subject", "group", "source", "label", "confidence", "model_name",
    "model_version", "created_at_us", "stored_at_us", "latency_ms",
)  # fmt: skip
#: The last column: the owner of a shared record, empty for your own.
SHARED_FROM = "shared_from"


@router.get(
    "/v1/groups/{group}/export.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "one row per scan"}},
)
def group_export(
    group: GroupPath,
    request: Request,
    principal: Annotated[Principal, guard("GET /v1/groups/{group}/export.csv")],
) -> StreamingResponse:
    """Every record of one group as CSV, streamed page by page: your own and those
    sharing grants let you read (``shared_from`` names their owner), masked as shared."""
    sharing = Sharing(services_of(request).store)
    rows = _csv_lines(sharing, principal.tenant, group)
    disposition = f'attachment; filename="{_safe_filename(group)}.csv"'
    return StreamingResponse(
        rows, media_type="text/csv", headers={"Content-Disposition": disposition}
    )


def _csv_lines(sharing: Sharing, tenant: str, group: str) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow((*CSV_COLUMNS, SHARED_FROM))
    cursor: str | None = None
    while True:
        # Each page is read afresh through the grants: a revocation stops the rest.
        page = sharing.list_visible(tenant, ResultFilter(group=group), cursor, 1000)
        for seen in page.items:
            cells = [getattr(seen.row, name) for name in CSV_COLUMNS]
            writer.writerow([_cell(value) for value in (*cells, seen.shared_from)])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        cursor = page.next_cursor
        if cursor is None:
            return


def _cell(value: object) -> object:
    # A cell starting with = + - @ is a formula to spreadsheets, and so is one after a
    # leading tab or carriage return (which they drop): neutralise it.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _safe_filename(group: str) -> str:
    safe = (ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "_" for ch in group)
    return "".join(safe)[:64] or "group"


@router.post("/v1/feedback", response_model=FeedbackOut, status_code=201)
def post_feedback(
    body: FeedbackIn,
    request: Request,
    principal: Annotated[Principal, guard("POST /v1/feedback")],
) -> FeedbackOut:
    """Record the ground truth of one subject (a label that arrives late) for one head of the
    application (default: its first); a later post corrects it.

    The head must be the application's and the label one of that head's; anything else
    is a 400 naming what is allowed.
    """
    state = services_of(request)
    app = state.app
    if app.first_head is None:
        raise BadRequest(f"application {app.name!r} predicts nothing; there is no label to correct")
    heads = {head.name: head for head in app.heads}
    head = heads.get(body.head) if body.head else app.first_head
    if head is None:
        raise BadRequest(f"head {body.head!r} is not one of {app.name}'s: {', '.join(heads)}")
    if body.label not in head.label_names:
        raise BadRequest(
            f"label {body.label!r} is not one head {head.name!r} predicts; use one of "
            f"{', '.join(head.label_names)}"
        )
    entry = state.store.add_feedback(
        principal.tenant, body.subject, body.label, app=app.name, head=head.name,
        source=body.source,
    )  # fmt: skip
    return FeedbackOut(
        subject=entry.subject, head=entry.head, label=entry.label, source=entry.source,
        at_us=entry.at_us,
    )  # fmt: skip


@router.get("/v1/models/accuracy", response_model=list[Accuracy])
def model_accuracy(
    request: Request, principal: Annotated[Principal, guard("GET /v1/models/accuracy")]
) -> list[Accuracy]:
    """Agreement with the ground truth received so far, per model version."""
    rows = services_of(request).store.accuracy_by_model_version(principal.tenant)
    return [Accuracy.of(row) for row in rows]
