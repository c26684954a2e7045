"""The cameras application's own HTTP route, mounted by the API under ``/v1/apps/cameras``.

``GET /state``: the newest fused facility state of the caller's tenant (of flow
``prod`` unless ``?flow=`` names another, of any facility unless ``?facility=``) as a
table, one row per track: is a locomotive there, where its head and tail are, which
cameras see it and which of the track's cameras are silent. ``GET /state/tracks``: the
same state drawn (a dashboard ``lanes`` view): each track a lane in metres, the
locomotive on it from tail to head, and beneath it the track's cameras, each segment
marked as seeing the locomotive, seeing nothing, or silent. They are the dashboard's
live views of the facility; the state history is the records themselves
(``GET /v1/apps/cameras/records?facility=...``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from inferstream.api.app_routes import AppRoutes, guard
from inferstream.api.auth import Principal
from inferstream.api.permissions import READ, Role
from inferstream.api.services import services_of
from inferstream.apps.cameras.layout import Camera, FacilityLayout
from inferstream.store import ResultFilter, ResultRow, ResultsStore

PERMISSIONS: dict[str, frozenset[Role]] = {"GET /state": READ, "GET /state/tracks": READ}
COLUMNS = ("Track", "Locomotive", "Head (m)", "Tail (m)", "Cameras", "Missing cameras")

router = APIRouter(tags=["cameras"])


@router.get("/state")
async def state(
    request: Request,
    principal: Annotated[Principal, guard(PERMISSIONS, "GET /state")],
    flow: str = "prod",
    facility: str | None = None,
) -> dict[str, Any]:
    """The newest facility state, one row per track (a dashboard ``table`` view)."""
    store = services_of(request).store
    row = await run_in_threadpool(newest_state, store, principal.tenant, flow, facility)
    return state_table(row)


@router.get("/state/tracks")
async def state_tracks(
    request: Request,
    principal: Annotated[Principal, guard(PERMISSIONS, "GET /state/tracks")],
    flow: str = "prod",
    facility: str | None = None,
) -> dict[str, Any]:
    """The newest facility state drawn: one lane per track (a dashboard ``lanes`` view)."""
    store = services_of(request).store
    row = await run_in_threadpool(newest_state, store, principal.tenant, flow, facility)
    return state_lanes(row)


def newest_state(
    store: ResultsStore, tenant: str, flow: str, facility: str | None
) -> ResultRow | None:
    """The newest stored state record of ``flow`` (sightings carry no ``state``)."""
    attributes = {"flow": flow, **({"facility": facility} if facility else {})}
    of_flow = ResultFilter(app="cameras", attributes=attributes)
    cursor: str | None = None
    while True:
        page = store.list_results(tenant, of_flow, cursor, limit=50, order="desc")
        found = next((row for row in page.items if "state" in row.attributes), None)
        if found is not None or page.next_cursor is None:
            return found
        cursor = page.next_cursor


def state_table(row: ResultRow | None) -> dict[str, Any]:
    """A state record as ``{"columns", "rows", "note"}``; no rows before the first."""
    if row is None:
        return {"columns": list(COLUMNS), "rows": [], "note": "no facility state stored yet"}
    fused = json.loads(row.attributes["state"])
    rows = [
        [track["track"], "yes" if track["occupied"] else "no", _metres(track["head_m"]),
         _metres(track["tail_m"]), ", ".join(track["cameras"]), ", ".join(track["missing"])]
        for track in fused["tracks"]
    ]  # fmt: skip
    missing = ", ".join(fused["missing"])
    health = f"degraded: {missing} silent" if fused["degraded"] else "complete"
    start = datetime.fromtimestamp(int(row.attributes["window_start_us"]) / 1e6, UTC)
    note = f"{fused['facility']}, window from {start:%Y-%m-%d %H:%M:%S} UTC: {health}"
    return {"columns": list(COLUMNS), "rows": rows, "note": note}


def state_lanes(row: ResultRow | None) -> dict[str, Any]:
    """A state record as ``{"unit", "lanes", "note"}``: per track, the locomotive from
    its tail to its head (where an end is out of sight, the edge of the cameras seeing
    it) and the track's camera segments (``item`` seeing it, ``muted`` not, ``alert``
    silent)."""
    if row is None:
        return {"unit": "m", "lanes": [], "note": "no facility state stored yet"}
    fused = json.loads(row.attributes["state"])
    layout = FacilityLayout(
        fused["facility"], len(fused["tracks"]), fused["cameras_per_track"],
        fused["track_length_m"],
    )  # fmt: skip
    lanes = []
    for track in fused["tracks"]:
        cameras = [c for c in layout.cameras if c.track == track["track"]]
        seeing = [c for c in cameras if c.name in track["cameras"]]
        spans = []
        if track["occupied"] and seeing:
            low, high = _extent(track["tail_m"], track["head_m"], seeing)
            spans.append({"from": low, "to": high, "label": "locomotive", "style": "item"})
        marks = [
            {"from": c.start_m, "to": c.end_m, "label": c.name,
             "style": "alert" if c.name in track["missing"]
             else "item" if c.name in track["cameras"] else "muted"}
            for c in cameras
        ]  # fmt: skip
        lanes.append(
            {"name": f"Track {track['track']}", "length": layout.track_length_m,
             "spans": spans, "marks": marks}
        )  # fmt: skip
    return {"unit": "m", "lanes": lanes, "note": state_table(row)["note"]}


def _extent(tail: float | None, head: float | None, seeing: list[Camera]) -> tuple[float, float]:
    """Where a locomotive is on its track: tail to head; an end out of sight is taken
    at the edge of the cameras seeing it farthest from the end in sight."""
    edges = [c.start_m for c in seeing] + [c.end_m for c in seeing]
    ends = [end for end in (tail, head) if end is not None]
    if len(ends) == 1:
        ends.append(max(edges, key=lambda m: abs(m - ends[0])))
    low, high = (min(ends), max(ends)) if ends else (min(edges), max(edges))
    return round(low, 1), round(high, 1)


def _metres(position: float | None) -> float | None:
    return None if position is None else round(position, 1)


def make_routes() -> AppRoutes:
    """The ``routes`` hook of :data:`inferstream.apps.cameras.APP`."""
    return AppRoutes(router, PERMISSIONS)
