"""Audit completeness: every route of the permission matrix, driven once, leaves exactly
one entry with the right actor, tenant, action and status; refusals and the live feed
are recorded, probes and metrics are not; both stores; tenants see only their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from api_testing import JWT_SECRET, World, start_world
from pg_testing import POSTGRES_URL, private_schema
from test_api_permissions import CALLS, Seeded, seed

from inferstream.api import ApiSettings
from inferstream.api.permissions import PERMISSIONS
from inferstream.apps.eggs import APP
from inferstream.pipeline import load_pipeline
from inferstream.store.audit import DEPLOYMENT, StoredEntry

EXEMPT_CALLS = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready",
                "/dashboard", "/dashboard/assets/dashboard.js", "/openapi.json")  # fmt: skip


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def audited(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[World, Seeded]]:
    folder = tmp_path_factory.mktemp("audit")
    with _store_url(request.param, folder) as store:
        spec = load_pipeline(APP.pipeline_path()).with_urls(
            bus=f"sqlite:///{folder / 'bus.db'}", store=store, blobs=f"file://{folder / 'blobs'}"
        )
        settings = ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6,
                               audit_key="k" * 32)  # fmt: skip
        for world in start_world(settings):
            yield world, seed(world)


@contextmanager
def _store_url(kind: str, folder: Path) -> Iterator[str]:
    if kind == "postgres":
        with private_schema(POSTGRES_URL, "audit") as url:
            yield url
    else:
        yield f"sqlite:///{folder / 'results.db'}"


def _entries(world: World, tenant: str) -> list[StoredEntry]:
    services = world.client.app.state.services  # type: ignore[attr-defined]
    services.audit.flush()
    return list(services.audit.log.entries(tenant))


def _key_id(world: World, tenant: str, role: str) -> str:
    return f"key:{world.keys[(tenant, role)].split('.')[2]}"


def test_every_request_is_recorded_once(audited: tuple[World, Seeded]) -> None:
    world, seeded = audited
    sent: dict[str, tuple[str, int]] = {}
    for route in sorted(PERMISSIONS):
        url, kwargs = CALLS[route](seeded)
        request_id = uuid.uuid4().hex
        headers = {**kwargs.pop("headers", {}), **world.headers(world.own, "admin"),
                   "X-Request-ID": request_id}  # fmt: skip
        answer = world.client.request(route.split()[0], url, headers=headers, **kwargs)
        # Allowed; whether it succeeds is test_api_permissions' business, the status
        # it got is what the entry must say.
        assert answer.status_code not in (401, 403), (route, answer.text)
        sent[request_id] = (route, answer.status_code)
    for url in EXEMPT_CALLS:
        assert world.client.get(url, headers={"X-Request-ID": f"exempt-{url}"}).status_code == 200
    entries = _entries(world, world.own)
    by_id: dict[str, list[StoredEntry]] = {}
    for stored in entries:
        by_id.setdefault(stored.entry.request_id, []).append(stored)
    admin = _key_id(world, world.own, "admin")
    for request_id, (route, status) in sent.items():
        (stored,) = by_id[request_id]
        entry = stored.entry
        assert (entry.action, entry.status, entry.actor, entry.role, entry.actor_kind) == (
            route, status, admin, "admin", "key"
        ), route  # fmt: skip
        assert entry.tenant == world.own and entry.source
    assert not [e for e in entries if e.entry.request_id.startswith("exempt-")]
    # Path ids are the target: the scan read, the key revoked.
    assert any(seeded.scan_id in e.entry.target for e in entries if "scan_id" in e.entry.action)
    model_changes = [e for e in entries if e.entry.action.startswith("model ")]
    assert {e.entry.action for e in model_changes} >= {"model register", "model alias",
                                                       "model rollback"}  # fmt: skip
    verify = world.client.get("/v1/audit/verify", headers=world.headers(world.own, "admin"))
    assert verify.json()["ok"] and verify.json()["signed"]


def test_refusals_are_recorded_with_the_claimed_caller(audited: tuple[World, Seeded]) -> None:
    world, _ = audited
    forbidden = world.client.get(
        "/v1/audit", headers={**world.headers(world.own, "viewer"), "X-Request-ID": "r-403"}
    )
    wrong = world.keys[(world.own, "operator")].rsplit(".", 1)[0] + ".not-the-secret"
    unknown = world.client.get("/v1/results", headers={"X-API-Key": wrong, "X-Request-ID": "r-401"})
    anonymous = world.client.get("/v1/results", headers={"X-Request-ID": "r-anon"})
    assert (forbidden.status_code, unknown.status_code, anonymous.status_code) == (403, 401, 401)
    own = {e.entry.request_id: e.entry for e in _entries(world, world.own)}
    assert (own["r-403"].status, own["r-403"].actor, own["r-403"].action) == (
        403, _key_id(world, world.own, "viewer"), "GET /v1/audit"
    )  # fmt: skip
    assert (own["r-401"].status, own["r-401"].actor, own["r-401"].actor_kind) == (
        401, _key_id(world, world.own, "operator"), "claimed key"
    )  # fmt: skip
    deployment = {e.entry.request_id: e.entry for e in _entries(world, DEPLOYMENT)}
    assert deployment["r-anon"].actor_kind == "anonymous"
    assert "r-anon" not in own


def test_a_live_subscription_is_recorded_once(audited: tuple[World, Seeded]) -> None:
    world, _ = audited
    before = len(_entries(world, world.other))
    token = world.keys[(world.other, "viewer")]
    with world.client.websocket_connect("/v1/live") as socket:
        socket.send_json({"token": token})
        socket.receive_text()  # the first snapshot: subscribed
    entries = _entries(world, world.other)
    (entry,) = [e.entry for e in entries[before:]]
    assert (entry.action, entry.status, entry.actor) == (
        "WS /v1/live", 101, _key_id(world, world.other, "viewer")
    )  # fmt: skip


def test_a_tenant_reads_only_its_own_log(audited: tuple[World, Seeded]) -> None:
    world, seeded = audited
    world.client.get("/v1/whoami", headers=world.headers(world.other, "viewer"))
    own_admin = world.headers(world.own, "admin")
    seen: list[dict[str, object]] = []
    cursor = ""
    for _ in range(100):
        page = world.client.get(f"/v1/audit?limit=50{cursor}", headers=own_admin).json()
        seen += page["items"]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert {item["tenant"] for item in seen} == {world.own}
    seqs = [item["seq"] for item in seen]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    assert seqs[-1] == 1  # every page walked down to the first entry
    other = world.client.get("/v1/audit/export", headers=world.headers(world.other, "admin"))
    assert world.own not in other.text and seeded.scan_id not in other.text
    assert other.text.count(f'"tenant":"{world.other}"') == len(other.text.splitlines())
    # Reading the log is itself recorded.
    listed = world.client.get(
        "/v1/audit?action=GET%20/v1/audit/export", headers=world.headers(world.other, "admin")
    ).json()["items"]
    assert listed and listed[0]["status"] == 200


def test_without_audit_nothing_is_recorded(tmp_path: Path) -> None:
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}", store=f"sqlite:///{tmp_path / 'r.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )  # fmt: skip
    settings = replace(ApiSettings(spec, "scans.raw", JWT_SECRET), audit=False)
    for world in start_world(settings):
        world.client.get("/v1/whoami", headers=world.headers(world.own, "viewer"))
        assert _entries(world, world.own) == []
