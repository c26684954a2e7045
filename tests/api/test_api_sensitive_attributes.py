"""The API with a sensitive attribute (the file drop's ``file``) and a KEK configured:
never in clear in the database file, given in clear by every route that returns
records, a 400 naming it as a filter, null and flagged once the tenant is shredded."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from api_testing import World, start_world

from inferstream.api import ApiSettings
from inferstream.apps.filedrop import APP
from inferstream.key_provider import KEK_ENV, key_provider_from_env
from inferstream.store import ResultRow, ResultsStore
from inferstream.store.data_keys import CACHE_ENV, data_keys

SECRET = "smith_jane_0412.png"


@pytest.fixture
def sealed_world(settings: ApiSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(KEK_ENV, base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv(CACHE_ENV, "0")  # a shred from another process is seen at once
    yield from start_world(replace(settings, app=APP))


def _record(tenant: str, ident: str) -> ResultRow:
    return ResultRow(
        id=ident, tenant=tenant, app=APP.name, head="shape", label="circle", confidence=0.9,
        scores={"circle": 0.9}, model_name="shapes", model_version="1", created_at_us=1_000,
        ingested_at_us=2_000, stored_at_us=3_000, latency_ms=1.0, subject=ident,
        source="inbox", attributes={"name": ident, "file": SECRET, "folder": "inbox"},
    )  # fmt: skip


def _files(world: World, url: str, tenant: str) -> list[tuple[object, object]]:
    answer = world.client.get(url, headers=world.headers(tenant, "viewer"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    items = body["items"] if "items" in body else [body.get("record") or body["result"]]
    return [(item["attributes"].get("file"), item["withheld"]) for item in items]


def test_every_route_opens_it_no_filter_takes_it_and_a_shred_nulls_it(
    sealed_world: World, settings: ApiSettings, tmp_path: Path
) -> None:
    world, own = sealed_world, sealed_world.own
    services = world.client.app.state.services  # type: ignore[attr-defined]
    services.store.upsert_results([_record(own, "f1")])
    database = b"".join(p.read_bytes() for p in tmp_path.glob("results.db*"))
    assert b"inbox" in database and SECRET.encode() not in database

    described = world.client.get("/v1/apps/filedrop", headers=world.headers(own, "viewer"))
    file = next(a for a in described.json()["attributes"] if a["name"] == "file")
    assert file["sensitive"] is True and file["filterable"] is False
    routes = ("/v1/apps/filedrop/records", "/v1/apps/filedrop/records/f1", "/v1/results",
              "/v1/scans/f1")  # fmt: skip
    for route in routes:
        assert _files(world, route, own) == [(SECRET, {})], route

    refused = world.client.get(
        "/v1/apps/filedrop/records?file=x", headers=world.headers(own, "viewer")
    )
    assert refused.status_code == 400
    assert "file of 'filedrop' is sensitive" in refused.json()["detail"]

    provider = key_provider_from_env()
    assert provider is not None
    with ResultsStore(settings.pipeline.store) as store:  # as `inferstream keys shred` does
        assert data_keys(store, provider).shred(own, actor="cli:ops") == 1
    for route in routes:
        assert _files(world, route, own) == [(None, {"file": "shredded"})], route
