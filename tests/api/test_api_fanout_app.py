"""A second application through the public API, end to end on both buses: photos in
over the API, a 1 -> N fan-out, two prediction heads, every child record stored with
its own fields and counted by id, and filterable over the API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from api_testing import JWT_SECRET, World, add_keys
from fanout_app import APP, CROPS, pipeline_file
from fastapi.testclient import TestClient

from inferstream.api import ApiSettings, create_app
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultsStore
from inferstream.testing import pipeline_threads

PHOTOS = 12

pytestmark = pytest.mark.slow


def photo(n: int) -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((24, 32), 10 * n % 255, np.uint8))
    assert ok
    return bytes(encoded)


def test_a_fan_out_application_stores_every_child_with_its_fields(
    tmp_path: Path, bus_url: str
) -> None:
    spec = load_pipeline(pipeline_file(tmp_path, bus_url))
    settings = ApiSettings(spec, "photos", JWT_SECRET, rate_per_s=1e6, burst=10**6)
    with TestClient(create_app(settings)) as client, pipeline_threads(spec):
        world = World(client, ("farm-a", "farm-b"))
        add_keys(world, client.app.state.services.accounts)  # type: ignore[attr-defined]
        sent = _upload(world)
        store: ResultsStore = client.app.state.services.store  # type: ignore[attr-defined]
        _wait(lambda: store.count_results("farm-a") >= PHOTOS * CROPS, store)
        time.sleep(0.5)  # anything doubled would land now

        records = store.list_results("farm-a", limit=1000).items
        assert len(records) == PHOTOS * CROPS  # 0 doubled
        by_root: dict[str, list[Any]] = {}
        for record in records:
            by_root.setdefault(record.root_id, []).append(record)
        assert set(by_root) == set(sent)  # 0 lost: every photo has its crops
        for photo_id, crops in by_root.items():
            assert sorted(r.attributes["crop"] for r in crops) == list(range(CROPS))
            assert {r.subject for r in crops} == {f"{photo_id}-{i}" for i in range(CROPS)}
            assert {r.parent_id for r in crops} == {photo_id}
            assert all(r.group == sent[photo_id] and r.source == "drone-7" for r in crops)
            assert len({r.id for r in crops}) == CROPS  # each child under its own id
        crop = records[0]
        answers = {
            (a.head, a.role, a.model_version) for a in store.list_predictions("farm-a", crop.id)
        }
        assert answers == {("grade", "champion", "1"), ("grade", "shadow", "2-rc"),
                           ("colour", "champion", "1")}  # fmt: skip
        assert crop.head == "grade" and crop.label in ("healthy", "rust")
        assert store.count_results("farm-b") == 0

        _check_the_api(world, sent)


def _upload(world: World) -> dict[str, str]:
    """Photo id -> its field, for every photo accepted."""
    sent = {}
    headers = world.headers("farm-a", "device")
    for n in range(PHOTOS):
        field = f"F{n % 3}"
        answer = world.client.post(
            "/v1/scans",
            files=[("files", (f"p{n}.png", photo(n)))],
            data={"field": field, "drone": "drone-7"},
            headers=headers,
        )
        assert answer.status_code == 202, answer.text
        (photo_id,) = answer.json()["ids"]
        sent[photo_id] = field
    refused = world.client.post(
        "/v1/scans", files=[("files", ("x.png", photo(1)))], data={"tray": "T"}, headers=headers
    )
    assert refused.status_code == 400 and "tray" in refused.json()["detail"]
    return sent


def _check_the_api(world: World, sent: dict[str, str]) -> None:
    viewer = world.headers("farm-a", "viewer")
    in_f1 = world.client.get("/v1/results?group=F1&limit=1000", headers=viewer).json()["items"]
    assert len(in_f1) == CROPS * sum(1 for field in sent.values() if field == "F1")
    assert {item["group"] for item in in_f1} == {"F1"}
    assert all(item["app"] == APP.name and "crop" in item["attributes"] for item in in_f1)
    photo_id = next(iter(sent))
    status = world.client.get(f"/v1/scans/{photo_id}", headers=viewer).json()
    assert status["status"] == "processed" and status["records"] == CROPS
    assert {p["head"] for p in status["predictions"]} == {"grade", "colour"}
    summary = world.client.get("/v1/groups/F1/summary", headers=viewer).json()
    assert summary["count"] == len(in_f1)
    healthy = sum(1 for item in in_f1 if item["label"] == "healthy")
    assert summary["ratio"] == pytest.approx(healthy / len(in_f1))
    other = world.client.get("/v1/results?group=F1", headers=world.headers("farm-b", "viewer"))
    assert other.json()["items"] == []
    _check_the_application_routes(world, sent)


def _check_the_application_routes(world: World, sent: dict[str, str]) -> None:
    viewer = world.headers("farm-a", "viewer")
    base = f"/v1/apps/{APP.name}"
    declared = world.client.get(base, headers=viewer).json()
    assert [head["name"] for head in declared["heads"]] == ["grade", "colour"]
    assert declared["group_noun"] == "field"
    # Any declared filterable attribute, typed as declared; crop is an int.
    in_f2 = world.client.get(f"{base}/records?field=F2&limit=1000", headers=viewer).json()
    assert len(in_f2["items"]) == CROPS * sum(1 for field in sent.values() if field == "F2")
    by_drone = world.client.get(f"{base}/records?drone=drone-7&limit=1000", headers=viewer)
    assert len(by_drone.json()["items"]) == CROPS * len(sent)
    undeclared = world.client.get(f"{base}/records?tray=T1", headers=viewer)
    assert undeclared.status_code == 400 and "tray" in undeclared.json()["detail"]
    not_filterable = world.client.get(f"{base}/records?crop=1", headers=viewer)
    assert not_filterable.status_code == 400 and "crop" in not_filterable.json()["detail"]
    record = in_f2["items"][0]
    one = world.client.get(f"{base}/records/{record['id']}", headers=viewer).json()
    assert one["record"]["attributes"]["crop"] in range(CROPS)
    assert len(one["predictions"]) == 3 and one["image"].endswith(f"{record['root_id']}/image")
    typed = world.client.get(f"{base}/records?height=24&limit=1000", headers=viewer)
    assert len(typed.json()["items"]) == CROPS * len(sent)  # an int filter, typed
    wrong = world.client.get(f"{base}/records?height=tall", headers=viewer)
    assert wrong.status_code == 400 and "height" in wrong.json()["detail"]
    elsewhere = world.client.get("/v1/apps/eggs/records", headers=viewer)
    assert elsewhere.status_code == 404


def _wait(condition: Any, store: ResultsStore, timeout_s: float = 120.0) -> None:
    """A generous bound for the pipeline to finish, not a speed check."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        letters = [d.message for d in store.list_dead_letters("farm-a", limit=3).items]
        assert time.monotonic() < deadline, f"not every crop was stored; dead letters: {letters}"
        time.sleep(0.1)
