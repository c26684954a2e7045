"""Sharing grants through the API, on SQLite and PostgreSQL: owner x grantee x grant x route.

A hatchery (the world's first tenant) ingests six scans and holds one record of each;
a lab (the second) holds one record of its own; a third tenant is granted nothing.
For every kind of grant the hatchery's admin makes through ``POST /v1/grants``, the lab
reads exactly the records, records by id and images the grant covers, by id, through
every route: the record listing and record, the image, the result listing, each
group's summary and CSV export, and the live feed (none leaks into the scan status,
which sharing does not reach); the third tenant reads none; the revocation is in force
for the next request and the next live snapshot. The row-level-security policy itself
is tested in tests/store.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_testing import JWT_SECRET, World, dicom_bytes, start_world
from sqlalchemy import update

from inferstream.api import ApiSettings
from inferstream.api.auth import issue_key
from inferstream.api.live_hub import LiveHub
from inferstream.apps.eggs import APP
from inferstream.envelope import derive_id, now_us
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultRow
from inferstream.store.schema import share_grants

DAY_US = 86_400_000_000
START_US = 1_700_000_000_000_000
TRAYS = ("TRAY-0005", "TRAY-0008", "TRAY-0012", "TRAY-0015", "TRAY-0019", "TRAY-0025")
FAR = "2999-01-01T00:00:00Z"


@dataclasses.dataclass
class Sharing:
    world: World
    third: str
    third_key: str
    scans: list[str]  # by tray, in TRAYS order
    own_record: str  # the lab's

    @property
    def hatchery(self) -> str:
        return self.world.own

    @property
    def lab(self) -> str:
        return self.world.other

    def record(self, n: int) -> str:
        return derive_id(self.scans[n], "classify", 0)

    def get(self, url: str, tenant: str, role: str = "viewer") -> Any:
        headers = ({"X-API-Key": self.third_key} if tenant == self.third
                   else self.world.headers(tenant, role))  # fmt: skip
        return self.world.client.get(url, headers=headers)

    def key(self, tenant: str) -> str:
        return self.third_key if tenant == self.third else self.world.keys[(tenant, "viewer")]

    @property
    def store(self) -> Any:
        return self.world.client.app.state.services.store  # type: ignore[attr-defined]


@pytest.fixture
def sharing(store_url: str, tmp_path: Path) -> Iterator[Sharing]:
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}", store=store_url, blobs=f"file://{tmp_path / 'b'}"
    )
    settings = ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6)
    for world in start_world(settings):
        services = world.client.app.state.services  # type: ignore[attr-defined]
        third = f"third-{world.own}"
        services.accounts.create_tenant(third)
        third_key = issue_key(services.accounts, third, "k", "admin").secret
        scans = [_ingest(world, n, tray) for n, tray in enumerate(TRAYS)]
        rows = [
            _row(world.own, scan, n, tray)
            for n, (scan, tray) in enumerate(zip(scans, TRAYS, strict=True))
        ]
        own = dataclasses.replace(rows[2], tenant=world.other, id="lab-own", root_id="lab-scan")
        services.store.upsert_results([*rows, own])
        yield Sharing(world, third, third_key, scans, own.id)


def _ingest(world: World, n: int, tray: str) -> str:
    answer = world.client.post(
        "/v1/scans",
        content=dicom_bytes(seed=n, AccessionNumber=tray),
        headers={**world.headers(world.own, "device"), "Content-Type": "application/dicom"},
    )
    assert answer.status_code == 202, answer.text
    (scan_id,) = answer.json()["ids"]
    return str(scan_id)


def _row(tenant: str, scan: str, n: int, tray: str) -> ResultRow:
    at = START_US + n * DAY_US
    return ResultRow(
        id=derive_id(scan, "classify", 0), tenant=tenant, label="female", confidence=0.9,
        scores={"female": 0.9, "male": 0.05, "not_developing": 0.05}, model_name="egg_sexing",
        model_version="1.0.0", created_at_us=at, ingested_at_us=at + 1, stored_at_us=at + 2,
        latency_ms=1.0, app="eggs", root_id=scan, subject=f"EGG-{n}", group=tray,
        source="SCANNER-01", head="sex",
        attributes={"egg_id": f"EGG-{n}", "tray": tray, "scanner": "SCANNER-01"},
    )  # fmt: skip


def _iso(n_days: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp((START_US + n_days * DAY_US) / 1e6, UTC).isoformat()


#: grant body (beyond grantee, app, expiry) -> (tray numbers the lab reads, images too)
CASES: dict[str, tuple[dict[str, Any] | None, set[int], bool]] = {
    "none": (None, set(), False),
    "app": ({}, {0, 1, 2, 3, 4, 5}, True),
    "tray_range": (
        {"conditions": [{"attribute": "tray", "min": "TRAY-0010", "max": "TRAY-0020"}]},
        {2, 3, 4},
        True,
    ),
    "tray_equals": ({"conditions": [{"attribute": "tray", "equals": "TRAY-0008"}]}, {1}, True),
    "date_range": ({"since": _iso(1), "until": _iso(3)}, {1, 2}, True),
    "no_images": ({"images": False}, {0, 1, 2, 3, 4, 5}, False),
    "masked": ({"masked": ["egg_id", "scanner"]}, {0, 1, 2, 3, 4, 5}, True),
    # The group is masked: listed without it, in no group's summary or export.
    "masked_group": ({"masked": ["tray"], "images": False}, {0, 1, 2, 3, 4, 5}, False),
    "expired": ({"expire": True}, set(), False),
    "revoked": ({"revoke": True}, set(), False),
}


def _grant(s: Sharing, body: dict[str, Any]) -> str:
    payload = {"grantee": s.lab, "app": "eggs", "expires_at": FAR}
    payload.update({k: v for k, v in body.items() if k not in ("expire", "revoke")})
    answer = s.world.client.post(
        "/v1/grants", json=payload, headers=s.world.headers(s.hatchery, "admin")
    )
    assert answer.status_code == 201, answer.text
    grant_id = str(answer.json()["id"])
    if body.get("expire"):  # its expiry passed: moved to the past in the database
        store = s.world.client.app.state.services.store  # type: ignore[attr-defined]
        with store.engine.begin() as conn:
            conn.execute(update(share_grants).where(share_grants.c.id == grant_id)
                         .values(expires_at_us=1))  # fmt: skip
    if body.get("revoke"):
        revoked = s.world.client.delete(
            f"/v1/grants/{grant_id}", headers=s.world.headers(s.hatchery, "admin")
        )
        assert revoked.status_code == 200 and revoked.json()["revoked_at_us"], revoked.text
    return grant_id


def _what_reads(s: Sharing, tenant: str) -> tuple[set[str], set[str], set[str]]:
    """(records listed, records read by id, scans whose image is read) of the hatchery's."""
    listed = s.get("/v1/apps/eggs/records?limit=1000", tenant).json()["items"]
    mine = {item["id"] for item in listed if item["shared_from"] is None}
    shared = {item["id"] for item in listed if item["shared_from"] is not None}
    assert all(item["shared_from"] == s.hatchery for item in listed if item["id"] in shared)
    assert mine == ({s.own_record} if tenant == s.lab else set())
    by_id, images = set(), set()
    for n, scan in enumerate(s.scans):
        answer = s.get(f"/v1/apps/eggs/records/{s.record(n)}", tenant)
        assert answer.status_code in (200, 404), answer.text
        if answer.status_code == 200:
            by_id.add(s.record(n))
            assert answer.json()["record"]["shared_from"] == s.hatchery
            assert [p["model_version"] for p in answer.json()["predictions"]] == ["1.0.0"]
        image = s.get(f"/v1/scans/{scan}/image", tenant)
        assert image.status_code in (200, 404), image.text
        if image.status_code == 200:
            assert image.headers["content-type"] == "image/png"
            images.add(scan)
    return shared, by_id, images


@dataclasses.dataclass
class Elsewhere:
    """The hatchery's records one tenant reads beyond the record routes, by route."""

    results: set[str]
    summary: set[str]  # the records of the trays whose summary counts one of the hatchery's
    csv: set[str]
    live: set[str]
    rows: list[dict[str, Any]]  # every shared item read, to look for masked values


def _what_else_reads(s: Sharing, tenant: str) -> Elsewhere:
    """What results, summaries, exports and the live feed show ``tenant`` of the
    hatchery's records; each is marked with its owner, the tenant's own with none."""
    own = {s.own_record} if tenant == s.lab else set()
    items = s.get("/v1/results?limit=1000", tenant).json()["items"]
    shared = [item for item in items if item["shared_from"] is not None]
    assert {i["id"] for i in items if i["shared_from"] is None} == own
    found = Elsewhere({item["id"] for item in shared}, set(), set(), set(), list(shared))
    for n, tray in enumerate(TRAYS):
        found.summary |= _summary_reads(s, tenant, tray, own, n)
        lines = list(
            csv.DictReader(io.StringIO(s.get(f"/v1/groups/{tray}/export.csv", tenant).text))
        )
        mine = own if tray == "TRAY-0012" else set()
        assert {row["id"] for row in lines if not row["shared_from"]} == mine
        found.csv |= {row["id"] for row in lines if row["shared_from"]}
        found.rows += [row for row in lines if row["shared_from"]]
    with s.world.client.websocket_connect(f"/v1/live?token={s.key(tenant)}") as socket:
        newest = json.loads(socket.receive_text())["newest"]
    assert {scan["record_id"] for scan in newest if scan["shared_from"] is None} == own
    found.live = {scan["record_id"] for scan in newest if scan["shared_from"] is not None}
    found.rows += [scan for scan in newest if scan["shared_from"]]
    assert all(row["shared_from"] == s.hatchery for row in found.rows)
    assert all(s.get(f"/v1/scans/{scan}", tenant).status_code == 404 for scan in s.scans)
    return found


def _summary_reads(s: Sharing, tenant: str, tray: str, own: set[str], n: int) -> set[str]:
    summary = s.get(f"/v1/groups/{tray}/summary", tenant).json()
    parts = {part["shared_from"]: part["count"] for part in summary["by_owner"]}
    assert parts.pop(None) == (1 if tray == "TRAY-0012" and own else 0)
    assert set(parts) <= {s.hatchery} and parts.get(s.hatchery, 1) == 1, summary
    assert summary["count"] == sum(p["count"] for p in summary["by_owner"])
    return {s.record(n)} if parts else set()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_lab_reads_exactly_its_grant_through_every_route(sharing: Sharing, case: str) -> None:
    s = sharing
    body, trays, images = CASES[case]
    if body is not None:
        _grant(s, body)
    expected = {s.record(n) for n in trays}
    shared, by_id, seen_images = _what_reads(s, s.lab)
    assert shared == expected and by_id == expected
    assert seen_images == ({s.scans[n] for n in trays} if images else set())
    elsewhere = _what_else_reads(s, s.lab)
    grouped = set() if case == "masked_group" else expected  # by a group it cannot see: none
    assert (elsewhere.results, elsewhere.live) == (expected, expected)
    assert (elsewhere.summary, elsewhere.csv) == (grouped, grouped)
    assert _what_reads(s, s.third) == (set(), set(), set())
    assert _what_else_reads(s, s.third).rows == []
    # The owner's own view is untouched: all six, none marked shared.
    listed = s.get("/v1/apps/eggs/records?limit=1000", s.hatchery).json()["items"]
    assert {i["id"] for i in listed} == {s.record(n) for n in range(6)}
    assert all(i["shared_from"] is None for i in listed)
    if case == "masked":
        for item in s.get("/v1/apps/eggs/records?limit=1000", s.lab).json()["items"]:
            if item["shared_from"]:
                assert set(item["attributes"]) == {"tray"}, item
                assert item["subject"] is None and item["source"] is None
                assert not any(f"EGG-{n}" in str(item) for n in range(6))
        # Results, exports and the live feed: no egg id, no scanner (CSV: empty cells).
        assert elsewhere.rows and not any("EGG-" in str(r) or "SCANNER" in str(r)
                                          for r in elsewhere.rows)  # fmt: skip
        assert all(r["subject"] in (None, "") for r in elsewhere.rows)
        for query in ("subject=EGG-2", "source=SCANNER-01"):
            found = s.get(f"/v1/results?{query}", s.lab).json()["items"]
            assert all(item["shared_from"] is None for item in found), query
        # Filtering on a masked attribute tells nothing of the shared records.
        for query in ("egg_id=EGG-2", "scanner=SCANNER-01"):
            found = s.get(f"/v1/apps/eggs/records?{query}", s.lab).json()["items"]
            assert all(item["shared_from"] is None for item in found), query
        found = s.get("/v1/apps/eggs/records?tray=TRAY-0012", s.lab).json()["items"]
        assert {i["id"] for i in found} == {s.record(2), s.own_record}
    if case == "masked_group":
        assert all(r["group"] is None and "TRAY-" not in str(r) for r in elsewhere.rows)
        found = s.get("/v1/results?group=TRAY-0012", s.lab).json()["items"]
        assert [i["id"] for i in found] == [s.own_record]
    if case == "no_images":
        record = s.get(f"/v1/apps/eggs/records/{s.record(0)}", s.lab).json()
        assert record["image"] is None


def test_revocation_is_in_force_for_the_next_request(sharing: Sharing) -> None:
    s = sharing
    grant_id = _grant(s, {"conditions": [{"attribute": "tray", "max": "TRAY-0010"}]})
    assert _what_reads(s, s.lab)[0] == {s.record(0), s.record(1)}
    listed = s.get("/v1/grants", s.lab, "admin").json()  # the grantee sees what it holds
    assert [(g["id"], g["owner"], g["grantee"]) for g in listed] == [(grant_id, s.hatchery, s.lab)]
    # Only the owner revokes: the grantee's admin and the third tenant find no such grant.
    for key in (s.world.headers(s.lab, "admin"), {"X-API-Key": s.third_key}):
        assert s.world.client.delete(f"/v1/grants/{grant_id}", headers=key).status_code == 404
    assert _what_reads(s, s.lab)[0] == {s.record(0), s.record(1)}
    before = _what_else_reads(s, s.lab)
    shared = {s.record(0), s.record(1)}
    assert before.results == before.summary == before.csv == before.live == shared
    s.world.client.delete(f"/v1/grants/{grant_id}", headers=s.world.headers(s.hatchery, "admin"))
    assert _what_reads(s, s.lab) == (set(), set(), set())
    assert _what_else_reads(s, s.lab).rows == []


def test_the_live_feed_shows_no_revoked_record_even_to_a_new_subscriber(sharing: Sharing) -> None:
    """A snapshot built while the grant was live is not replayed after the revocation:
    the hub ticks only when woken here, so a cached snapshot would be what a second
    subscriber gets."""
    s = sharing
    grant_id = _grant(s, {"conditions": [{"attribute": "tray", "equals": "TRAY-0005"}]})
    hub = LiveHub(s.store, APP, tick_s=3600)
    channel = hub.channel(s.lab)

    def shared_in(message: str) -> set[str]:
        return {i["record_id"] for i in json.loads(message)["newest"] if i["shared_from"]}

    async def watch() -> tuple[set[str], set[str], set[str]]:
        first = hub.subscribe(channel)
        during = shared_in(await asyncio.wait_for(first.get(), 10))
        await asyncio.to_thread(
            s.world.client.delete, f"/v1/grants/{grant_id}",
            headers=s.world.headers(s.hatchery, "admin"),
        )  # fmt: skip
        revoked_at = now_us()
        second = hub.subscribe(channel)
        message = await asyncio.wait_for(second.get(), 10)
        assert json.loads(message)["at_us"] > revoked_at  # built afresh, not replayed
        after = shared_in(message)
        hub.unsubscribe(channel, first)
        hub.unsubscribe(channel, second)
        return during, after, shared_in(hub.tick([channel])[channel])

    assert asyncio.run(watch()) == ({s.record(0)}, set(), set())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"grantee": "nobody-at-all"}, "no tenant"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "past"),
        ({"conditions": [{"attribute": "colour", "equals": "red"}]}, "no attribute"),
        ({"masked": ["password"]}, "no attribute"),
        ({"conditions": [{"attribute": "tray", "equals": "A", "min": "B"}]}, "equals, or"),
    ],
)
def test_a_grant_that_cannot_hold_is_a_400(
    sharing: Sharing, body: dict[str, Any], message: str
) -> None:
    s = sharing
    payload = {"grantee": s.lab, "app": "eggs", "expires_at": FAR, **body}
    answer = s.world.client.post(
        "/v1/grants", json=payload, headers=s.world.headers(s.hatchery, "admin")
    )
    assert answer.status_code == 400 and message in answer.text, answer.text
    assert s.get("/v1/grants", s.hatchery, "admin").json() == []
