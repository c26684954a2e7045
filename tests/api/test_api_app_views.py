"""The routes the bundled applications' dashboard views read: the leaves trend as a
``lines`` view, the cameras' newest facility state as a ``table`` view. Read roles only
(a viewer yes, a device no), and only the caller's tenant's records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from api_testing import World, start_world

from inferstream.api import ApiSettings
from inferstream.apps import cameras, leaves
from inferstream.apps.cameras.fusion import Sighting, fuse
from inferstream.apps.cameras.layout import FacilityLayout
from inferstream.store import ResultRow

DAYS = ("2026-06-01", "2026-06-02")


def _record(tenant: str, n: int, app: str, label: str, attributes: dict[str, str]) -> ResultRow:
    return ResultRow(
        id=f"{tenant}-{app}-{n}", tenant=tenant, label=label, confidence=1.0,
        scores={label: 1.0}, model_name="m", model_version="1.0.0", created_at_us=1_000 + n,
        ingested_at_us=2_000 + n, stored_at_us=3_000 + n, latency_ms=1.0, app=app,
        attributes=attributes,
    )  # fmt: skip


def _grade(tenant: str, n: int, day: str, area: str, grade: int) -> ResultRow:
    attributes = {"date": day, "area": area, "disease_type": "rust", "record_kind": "grade"}
    return _record(tenant, n, "leaves", str(grade), attributes)


def _state(tenant: str, n: int, sightings: list[Sighting]) -> ResultRow:
    state = fuse(FacilityLayout(), sightings)
    attributes = {"flow": "prod", "facility": state.facility, "state": state.to_json(),
                  "window_start_us": str(1_780_000_000_000_000 + n * 1_000_000)}  # fmt: skip
    return _record(tenant, n, "cameras", "degraded" if state.degraded else "complete", attributes)


@pytest.fixture
def leaves_world(settings: ApiSettings) -> Iterator[World]:
    yield from start_world(replace(settings, app=leaves.APP))


@pytest.fixture
def cameras_world(settings: ApiSettings) -> Iterator[World]:
    yield from start_world(replace(settings, app=cameras.APP))


def _store(world: World) -> object:
    return world.client.app.state.services.store  # type: ignore[attr-defined]


def test_the_leaves_trend_is_one_series_per_disease_and_area(leaves_world: World) -> None:
    world = leaves_world
    grades = [(DAYS[0], "control", 3), (DAYS[0], "control", 2), (DAYS[1], "control", 3),
              (DAYS[0], "treated", 3), (DAYS[1], "treated", 1)]  # fmt: skip
    rows = [_grade(world.own, n, *grade) for n, grade in enumerate(grades)]
    _store(world).upsert_results(rows)  # type: ignore[attr-defined]
    url = "/v1/apps/leaves/trend"
    answer = world.client.get(url, headers=world.headers(world.own, "viewer"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "series": [
            {"name": "rust, control", "points": [[DAYS[0], 2.5], [DAYS[1], 3.0]]},
            {"name": "rust, treated", "points": [[DAYS[0], 3.0], [DAYS[1], 1.0]]},
        ],
        "x_label": "Day",
        "y_label": "Mean grade (0 healthy - 4 severe)",
    }
    assert world.client.get(url, headers=world.headers(world.own, "device")).status_code == 403
    other = world.client.get(url, headers=world.headers(world.other, "viewer"))
    assert other.status_code == 200 and other.json()["series"] == []
    # The analysis route is unchanged beside it.
    viewer = world.headers(world.own, "viewer")
    analysis = world.client.get("/v1/apps/leaves/analysis", headers=viewer)
    assert len(analysis.json()["cells"]) == 4


def test_the_cameras_state_is_the_newest_state_one_row_per_track(cameras_world: World) -> None:
    world = cameras_world
    url = "/v1/apps/cameras/state"
    viewer = world.headers(world.own, "viewer")
    empty = world.client.get(url, headers=viewer).json()
    assert empty["rows"] == [] and empty["note"] == "no facility state stored yet"
    every_camera_empty = [Sighting(c.name, c.track, "empty") for c in FacilityLayout().cameras]
    newest = [Sighting("t0c0", 0, "tail", 12.53), Sighting("t0c1", 0, "body"),
              Sighting("t0c2", 0, "head", 150.25),
              *(Sighting(f"t1c{k}", 1, "empty") for k in range(4)),
              *(Sighting(f"t2c{k}", 2, "empty") for k in range(3))]  # fmt: skip
    sighting = _record(world.own, 9, "cameras", "sighting", {"flow": "types", "camera": "t0c0"})
    rows = [_state(world.own, 1, every_camera_empty), _state(world.own, 2, newest), sighting]
    _store(world).upsert_results(rows)  # type: ignore[attr-defined]
    answer = world.client.get(url, headers=viewer)
    assert answer.status_code == 200, answer.text
    table = answer.json()
    assert table["columns"] == ["Track", "Locomotive", "Head (m)", "Tail (m)", "Cameras",
                                "Missing cameras"]  # fmt: skip
    assert table["rows"] == [
        [0, "yes", 150.2, 12.5, "t0c0, t0c1, t0c2", "t0c3"],
        [1, "no", None, None, "", ""],
        [2, "no", None, None, "", "t2c3"],
    ]
    window = "depot-1, window from 2026-05-28 20:26:42 UTC"
    assert table["note"] == f"{window}: degraded: t0c3, t2c3 silent"
    assert world.client.get(url, headers=world.headers(world.own, "device")).status_code == 403
    assert world.client.get(url).status_code == 401
    other = world.client.get(url, headers=world.headers(world.other, "viewer"))
    assert other.status_code == 200 and other.json()["rows"] == []


def test_the_cameras_state_drawn_is_a_lane_per_track_with_its_cameras(
    cameras_world: World,
) -> None:
    world = cameras_world
    url = "/v1/apps/cameras/state/tracks"
    viewer = world.headers(world.own, "viewer")
    assert world.client.get(url, headers=viewer).json()["lanes"] == []
    # Track 0: tail and head in view. Track 1: only the head (at 100 m, seen by t1c1;
    # t1c2 sees the body, so the locomotive reaches t1c2's far edge). Track 2: t2c3 silent.
    sightings = [Sighting("t0c0", 0, "tail", 12.53), Sighting("t0c1", 0, "body"),
                 Sighting("t0c2", 0, "head", 150.25), Sighting("t0c3", 0, "empty"),
                 Sighting("t1c0", 1, "empty"), Sighting("t1c1", 1, "head", 100.0),
                 Sighting("t1c2", 1, "body"), Sighting("t1c3", 1, "empty"),
                 *(Sighting(f"t2c{k}", 2, "empty") for k in range(3))]  # fmt: skip
    _store(world).upsert_results([_state(world.own, 1, sightings)])  # type: ignore[attr-defined]
    answer = world.client.get(url, headers=viewer)
    assert answer.status_code == 200, answer.text
    drawn = answer.json()
    assert drawn["unit"] == "m" and drawn["note"].endswith("degraded: t2c3 silent")
    lanes = {lane["name"]: lane for lane in drawn["lanes"]}
    assert list(lanes) == ["Track 0", "Track 1", "Track 2"]
    assert all(lane["length"] == 240.0 for lane in lanes.values())
    assert lanes["Track 0"]["spans"] == [
        {"from": 12.5, "to": 150.2, "label": "locomotive", "style": "item"}
    ]
    assert [(s["from"], s["to"]) for s in lanes["Track 1"]["spans"]] == [(100.0, 180.0)]
    assert lanes["Track 2"]["spans"] == []
    styles = {m["label"]: m["style"] for lane in lanes.values() for m in lane["marks"]}
    assert styles["t0c0"] == styles["t0c2"] == "item" and styles["t0c3"] == "muted"
    assert styles["t2c3"] == "alert" and styles["t2c0"] == "muted"
    assert lanes["Track 2"]["marks"][3] == {"from": 180.0, "to": 240.0, "label": "t2c3",
                                            "style": "alert"}  # fmt: skip
    assert world.client.get(url, headers=world.headers(world.own, "device")).status_code == 403
    other = world.client.get(url, headers=world.headers(world.other, "viewer"))
    assert other.status_code == 200 and other.json()["lanes"] == []
