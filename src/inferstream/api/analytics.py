"""Saved analytical queries over the Parquet export (``docs/analytics.md``).

An admin saves a named DuckDB query for its tenant; anyone of the tenant who may read
runs it, over the tenant's own files only (:func:`inferstream.analytics.query.open_tenant`),
and gets the cached result until the export moves. The export folder is the API's
``analytics_dir`` (``INFERSTREAM_ANALYTICS_DIR``); without one these routes answer 404.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from inferstream.analytics.query import AnalyticsQueryError
from inferstream.analytics.report import report_path
from inferstream.analytics.saved import SavedQueries
from inferstream.api.auth import Principal, require
from inferstream.api.errors import BadRequest, NotFound
from inferstream.api.permissions import roles_for
from inferstream.api.services import services_of

router = APIRouter(tags=["analytics"])

QueryName = Annotated[str, PathParam(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
#: A day (UTC) as YYYY-MM-DD; FastAPI refuses anything else with a 422.
Day = Annotated[dt.date, PathParam(examples=["2026-03-10"])]


class SavedQueryBody(BaseModel):
    sql: str = Field(min_length=1, max_length=20_000, description="one DuckDB SELECT")


@lru_cache(maxsize=8)
def _saved_queries(folder: str) -> SavedQueries:
    return SavedQueries(Path(folder))


def _folder(request: Request) -> str:
    folder = services_of(request).settings.analytics_dir
    if not folder:
        raise NotFound(
            "analytics are not set up on this API: set INFERSTREAM_ANALYTICS_DIR to the "
            "export folder (docs/analytics.md)"
        )
    return folder


def _queries(request: Request) -> SavedQueries:
    return _saved_queries(_folder(request))


@router.get("/v1/analytics/reports/{day}", response_class=FileResponse)
def daily_report(
    day: Day,
    request: Request,
    principal: Annotated[
        Principal, Depends(require(*roles_for("GET /v1/analytics/reports/{day}")))
    ],
) -> FileResponse:
    """Your tenant's daily report for a day (UTC), one HTML file with its plots inline;
    the scheduled chore writes yesterday's each day."""
    path = report_path(Path(_folder(request)), principal.tenant, day)
    if not path.is_file():
        raise NotFound(
            f"no report for {day}: the chore writes yesterday's, or run "
            f"'inferstream analytics report PIPELINE --tenant {principal.tenant} --day {day}'"
        )
    return FileResponse(path, media_type="text/html; charset=utf-8", filename=f"report-{day}.html")


@router.get("/v1/analytics/queries")
def list_queries(
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("GET /v1/analytics/queries")))],
) -> dict[str, Any]:
    """Your tenant's saved queries."""
    return {"queries": _queries(request).list(principal.tenant)}


@router.put("/v1/analytics/queries/{name}")
async def save_query(
    name: QueryName,
    body: SavedQueryBody,
    request: Request,
    principal: Annotated[
        Principal, Depends(require(*roles_for("PUT /v1/analytics/queries/{name}")))
    ],
) -> dict[str, Any]:
    """Save (or replace) a named query; it is run once now, so a query DuckDB refuses
    (another tenant's files, a COPY, a typo) is a 400 here."""
    queries = _queries(request)
    who = f"{principal.tenant}/{principal.subject}"
    try:
        entry = await run_in_threadpool(queries.save, principal.tenant, name, body.sql, who)
    except AnalyticsQueryError as exc:
        raise BadRequest(str(exc)) from exc
    return {"name": name, **entry}


@router.get("/v1/analytics/queries/{name}")
async def run_query(
    name: QueryName,
    request: Request,
    principal: Annotated[
        Principal, Depends(require(*roles_for("GET /v1/analytics/queries/{name}")))
    ],
) -> dict[str, Any]:
    """Run a saved query over your tenant's export; ``cache`` says whether the result was
    computed now or kept from an earlier run over the same export."""
    queries = _queries(request)
    saved = queries.get(principal.tenant, name)
    if saved is None:
        raise NotFound(f"no saved query {name!r}; PUT /v1/analytics/queries/{name} saves one")
    try:
        answer = await run_in_threadpool(queries.answer, principal.tenant, saved["sql"])
    except AnalyticsQueryError as exc:
        raise BadRequest(str(exc)) from exc
    rows = [dict(zip(answer.result.columns, row, strict=True)) for row in answer.result.rows]
    return {
        "name": name,
        "columns": answer.result.columns,
        "rows": rows,
        "truncated": answer.truncated,
        "cache": {
            "hit": answer.cached,
            "computed_at_us": answer.computed_at_us,
            "export_through_us": answer.export_through_us,
        },
    }


@router.delete("/v1/analytics/queries/{name}", status_code=204)
def delete_query(
    name: QueryName,
    request: Request,
    principal: Annotated[
        Principal, Depends(require(*roles_for("DELETE /v1/analytics/queries/{name}")))
    ],
) -> None:
    if not _queries(request).delete(principal.tenant, name):
        raise NotFound(f"no saved query {name!r}")
