"""The leaves application's own HTTP routes, mounted by the API under ``/v1/apps/leaves``.

``GET /analysis``: per day, area and disease the mean predicted grade, and per disease
the trend in each area (grade change per day) with whether the treated area heals
faster. ``GET /trend``: the same mean grades as the dashboard's ``lines`` view, one
series per disease and area. Both read the caller's tenant's grade records, cached a
few seconds per tenant (:func:`~inferstream.apps.leaves.analysis.trial_analysis`),
since a dashboard asks the same question again and again.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from inferstream.api.app_routes import AppRoutes, guard
from inferstream.api.auth import Principal
from inferstream.api.permissions import READ, Role
from inferstream.api.services import services_of
from inferstream.apps.leaves.analysis import Cell, trend_lines, trial_analysis

PERMISSIONS: dict[str, frozenset[Role]] = {"GET /analysis": READ, "GET /trend": READ}

router = APIRouter(tags=["leaves"])


@router.get("/analysis")
async def analysis(
    request: Request,
    principal: Annotated[Principal, guard(PERMISSIONS, "GET /analysis")],
) -> dict[str, Any]:
    """Mean grade per day, area and disease, and the treated-vs-control trend."""
    store = services_of(request).store
    return await run_in_threadpool(trial_analysis, store, principal.tenant)


@router.get("/trend")
async def trend(
    request: Request,
    principal: Annotated[Principal, guard(PERMISSIONS, "GET /trend")],
) -> dict[str, Any]:
    """Mean grade per day, one series per disease and area (a dashboard ``lines`` view)."""
    store = services_of(request).store
    answer = await run_in_threadpool(trial_analysis, store, principal.tenant)
    return trend_lines([Cell(**cell) for cell in answer["cells"]])


def make_routes() -> AppRoutes:
    return AppRoutes(router, PERMISSIONS)
