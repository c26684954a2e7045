"""The read side: scan status from results and dead letters, image, listings, CSV,
feedback and accuracy; and a tenant never sees another's rows (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import replace

import cv2
import numpy as np
import pytest
from api_testing import World, dicom_bytes, start_world
from pg_testing import private_schema

from inferstream.api import ApiSettings
from inferstream.envelope import derive_id
from inferstream.store import DeadLetterRow, ResultRow


def ingest(world: World, seed: int, tenant: str | None = None) -> str:
    headers = {
        **world.headers(tenant or world.own, "device"),
        "Content-Type": "application/dicom",
    }
    answer = world.client.post("/v1/scans", content=dicom_bytes(seed=seed), headers=headers)
    assert answer.status_code == 202, answer.text
    scan_id: str = answer.json()["ids"][0]
    return scan_id


def result(tenant: str, scan_id: str, n: int, **fields: object) -> ResultRow:
    """The record the classify stage makes from scan ``scan_id`` (under its own id)."""
    values: dict[str, object] = {
        "id": derive_id(scan_id, "classify", 0), "root_id": scan_id, "parent_id": scan_id,
        "tenant": tenant, "app": "eggs", "head": "sex", "label": "female", "confidence": 0.9,
        "scores": {"female": 0.9, "male": 0.05, "not_developing": 0.05},
        "model_name": "egg_sexing", "model_version": "1.0.0", "created_at_us": 1_000 + n,
        "ingested_at_us": 2_000 + n, "stored_at_us": 3_000 + n, "latency_ms": 2.0,
        "subject": f"EGG-{n:06d}", "group": "TRAY-0042", "source": "SCANNER-03",
        "attributes": {"egg_id": f"EGG-{n:06d}", "tray": "TRAY-0042", "scanner": "SCANNER-03"},
        "lineage": ({"stage": "classify", "at_us": 2_500 + n, "worker": "w"},),
    }  # fmt: skip
    values.update(fields)
    return ResultRow(**values)  # type: ignore[arg-type]


def get(world: World, url: str, tenant: str | None = None) -> object:
    return world.client.get(url, headers=world.headers(tenant or world.own, "viewer"))


def test_scan_status_queued_processed_dead_lettered(world: World) -> None:
    store = world.client.app.state.services.store  # type: ignore[attr-defined]
    queued, processed, failed = (ingest(world, seed) for seed in (11, 12, 13))
    store.upsert_results([result(world.own, processed, 12)])
    letter = DeadLetterRow(
        "dl-1", world.own, "classify", "InvalidScan", "no pixel data", 1, "scans.raw", 0, 3, 9,
        root_id=failed,
    )  # fmt: skip
    store.record_dead_letter(letter)
    waiting = get(world, f"/v1/scans/{queued}").json()  # type: ignore[attr-defined]
    assert waiting["status"] == "queued"
    # The scan's own attributes: source is the scanner, not the key that sent it.
    assert (waiting["subject"], waiting["group"], waiting["source"]) == (
        "EGG-000011",
        "TRAY-0042",
        "SCANNER-03",
    )
    done = get(world, f"/v1/scans/{processed}").json()  # type: ignore[attr-defined]
    assert done["status"] == "processed"
    assert done["result"]["model_version"] == "1.0.0"
    assert done["result"]["lineage"][0]["stage"] == "classify"
    assert done["result"]["root_id"] == processed and done["result"]["id"] != processed
    assert done["records"] == 1
    assert [(p["head"], p["role"], p["label"]) for p in done["predictions"]] == [
        ("sex", "champion", "female")
    ]
    dead = get(world, f"/v1/scans/{failed}").json()  # type: ignore[attr-defined]
    assert dead["status"] == "dead_lettered"
    assert dead["dead_letter"]["reason"] == "no pixel data"
    assert get(world, "/v1/scans/unknown-id").status_code == 404  # type: ignore[attr-defined]


def test_image_is_a_windowed_png_and_another_tenant_gets_404(world: World) -> None:
    scan_id = ingest(world, 14)
    answer = get(world, f"/v1/scans/{scan_id}/image")
    assert answer.headers["content-type"] == "image/png"  # type: ignore[attr-defined]
    image = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_UNCHANGED)  # type: ignore[attr-defined]
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255
    assert get(world, f"/v1/scans/{scan_id}/image", world.other).status_code == 404  # type: ignore[attr-defined]


def test_listing_filters_and_cursor_pages(world: World) -> None:
    store = world.client.app.state.services.store  # type: ignore[attr-defined]
    rows = [
        result(world.own, f"s{n}", n, label="male" if n % 2 else "female", confidence=n / 10)
        for n in range(1, 10)
    ]
    store.upsert_results(rows)
    seen: list[str] = []
    cursor = ""
    while True:
        page = get(world, f"/v1/results?limit=2&label=male{cursor}").json()  # type: ignore[attr-defined]
        seen += [item["root_id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == ["s1", "s3", "s5", "s7", "s9"]
    high = get(world, "/v1/results?min_confidence=0.75&max_confidence=0.85").json()  # type: ignore[attr-defined]
    assert [item["root_id"] for item in high["items"]] == ["s8"]
    bad = get(world, "/v1/results?cursor=not-a-cursor")
    assert bad.status_code == 422  # the schema's pattern: a cursor's shape is documented
    assert bad.json()["detail"][0]["loc"] == ["query", "cursor"]  # type: ignore[attr-defined]
    naive = get(world, "/v1/results?since=2026-01-01T00:00:00")
    assert naive.status_code == 400  # type: ignore[attr-defined]


def test_summary_csv_feedback_and_accuracy(world: World) -> None:
    store = world.client.app.state.services.store  # type: ignore[attr-defined]
    store.upsert_results([result(world.own, f"s{n}", n) for n in range(1, 5)])
    summary = get(world, "/v1/groups/TRAY-0042/summary").json()  # type: ignore[attr-defined]
    assert summary["count"] == 4 and summary["ratio"] == 1.0
    export = get(world, "/v1/groups/TRAY-0042/export.csv")
    lines = list(csv.DictReader(io.StringIO(export.text)))  # type: ignore[attr-defined]
    assert [line["root_id"] for line in lines] == ["s1", "s2", "s3", "s4"]
    headers = world.headers(world.own, "operator")
    for n, label in ((1, "female"), (2, "male")):
        answer = world.client.post(
            "/v1/feedback", json={"subject": f"EGG-{n:06d}", "label": label}, headers=headers
        )
        assert answer.status_code == 201
    (accuracy,) = get(world, "/v1/models/accuracy").json()  # type: ignore[attr-defined]
    assert (accuracy["labelled"], accuracy["correct"], accuracy["accuracy"]) == (2, 1, 0.5)
    assert get(world, "/v1/models/accuracy", world.other).json() == []  # type: ignore[attr-defined]


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(world: World) -> None:
    store = world.client.app.state.services.store  # type: ignore[attr-defined]
    sources = ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1+1", "\r=1+1", "SCANNER-03"]
    store.upsert_results([result(world.own, f"f{n}", n, source=source)
                          for n, source in enumerate(sources)])  # fmt: skip
    export = get(world, "/v1/groups/TRAY-0042/export.csv").text  # type: ignore[attr-defined]
    cells = [line["source"] for line in csv.DictReader(io.StringIO(export, newline=""))]
    assert cells == ["'" + source for source in sources[:-1]] + ["SCANNER-03"]


def check_isolation(world: World) -> None:
    """Both tenants have data; every listing of each holds only its own."""
    store = world.client.app.state.services.store  # type: ignore[attr-defined]
    for tenant, prefix in ((world.own, "a"), (world.other, "b")):
        store.upsert_results([result(tenant, f"{prefix}{n}", n) for n in range(5)])
        ingest(world, 20 + len(prefix), tenant)
    for tenant, prefix in ((world.own, "a"), (world.other, "b")):
        listed = get(world, "/v1/results?limit=1000", tenant).json()["items"]  # type: ignore[attr-defined]
        assert sorted(item["root_id"] for item in listed) == [f"{prefix}{n}" for n in range(5)]
        summary = get(world, "/v1/groups/TRAY-0042/summary", tenant).json()  # type: ignore[attr-defined]
        assert summary["count"] == 5
        export = get(world, "/v1/groups/TRAY-0042/export.csv", tenant).text  # type: ignore[attr-defined]
        ids = [line["root_id"] for line in csv.DictReader(io.StringIO(export))]
        assert sorted(ids) == [f"{prefix}{n}" for n in range(5)]
        other_prefix = "b" if prefix == "a" else "a"
        assert get(world, f"/v1/scans/{other_prefix}1", tenant).status_code == 404  # type: ignore[attr-defined]


def test_lists_never_return_another_tenants_data(world: World) -> None:
    check_isolation(world)


@pytest.fixture
def pg_world(settings: ApiSettings, postgres_url: str) -> Iterator[World]:
    with private_schema(postgres_url, "api") as url:
        spec = settings.pipeline.with_urls(store=url)
        yield from start_world(replace(settings, pipeline=spec))


@pytest.mark.postgres
def test_lists_never_return_another_tenants_data_on_postgresql(pg_world: World) -> None:
    check_isolation(pg_world)
