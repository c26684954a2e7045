"""Saved analytical queries: each tenant's SQL sees its own export only, and results are
cached until the export moves."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from analytics_testing import DAY0_US, KnownRun
from api_testing import World, start_world

from inferstream.analytics.export import export
from inferstream.api import ApiSettings
from inferstream.store import ResultsStore


@pytest.fixture
def analytics_world(settings: ApiSettings, tmp_path: Path) -> Iterator[World]:
    yield from start_world(replace(settings, analytics_dir=str(tmp_path / "analytics")))


def _store(world: World) -> ResultsStore:
    store: ResultsStore = world.client.app.state.services.store  # type: ignore[attr-defined]
    return store


def test_a_saved_query_counts_its_tenants_rows_and_is_cached_until_the_export_moves(
    analytics_world: World, tmp_path: Path
) -> None:
    world, folder = analytics_world, tmp_path / "analytics"
    known = KnownRun(_store(world))
    known.scans(world.own, 3, start_us=DAY0_US, group="TRAY-1")
    known.scans(world.other, 5, start_us=DAY0_US, group="TRAY-2")
    export(_store(world), folder, settle_s=0, now=DAY0_US + 3_600_000_000)
    sql = {"sql": "SELECT count(*) AS n, count(DISTINCT tenant) AS tenants FROM records"}
    for tenant in world.tenants:
        saved = world.client.put(
            "/v1/analytics/queries/volume", json=sql, headers=world.headers(tenant, "admin")
        )
        assert saved.status_code == 200, saved.text

    def ask(tenant: str) -> dict[str, object]:
        answer = world.client.get(
            "/v1/analytics/queries/volume", headers=world.headers(tenant, "viewer")
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, object] = answer.json()
        return body

    first = ask(world.own)
    assert first["rows"] == [{"n": 3, "tenants": 1}]
    assert first["cache"]["hit"] is False  # type: ignore[index]
    assert ask(world.own)["cache"]["hit"] is True  # type: ignore[index]
    assert ask(world.other)["rows"] == [{"n": 5, "tenants": 1}]
    # New rows exported: the next answer is computed again and counts them.
    known.scans(world.own, 2, start_us=DAY0_US + 7_200_000_000, group="TRAY-1")
    export(_store(world), folder, settle_s=0, now=DAY0_US + 10_800_000_000)
    again = ask(world.own)
    assert again["rows"] == [{"n": 5, "tenants": 1}]
    assert again["cache"]["hit"] is False  # type: ignore[index]
    listed = world.client.get("/v1/analytics/queries", headers=world.headers(world.own, "viewer"))
    assert list(listed.json()["queries"]) == ["volume"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM read_parquet('{folder}/tenant={other}/records/*/*/*.parquet')",
        "SELECT count(*) FROM read_parquet("
        "'{folder}/tenant={own}/../tenant={other}/records/*/*/*.parquet')",
        "SELECT count(*) FROM read_parquet('{folder}/*/records/*/*/*.parquet')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM glob('{folder}/*')",
        "COPY (SELECT * FROM records) TO '{folder}/tenant={own}/leak.csv'",
        "SET enable_external_access = true",
        "ATTACH '{folder}/x.duckdb'",
        "SELECT 1; SELECT 2",
    ],
)
def test_sql_cannot_reach_beyond_its_tenants_files(
    analytics_world: World, tmp_path: Path, sql: str
) -> None:
    world, folder = analytics_world, tmp_path / "analytics"
    known = KnownRun(_store(world))
    known.scans(world.own, 2, start_us=DAY0_US, group="TRAY-1")
    known.scans(world.other, 4, start_us=DAY0_US, group="TRAY-2")
    export(_store(world), folder, settle_s=0, now=DAY0_US + 3_600_000_000)
    text = sql.format(folder=folder, own=world.own, other=world.other)
    answer = world.client.put(
        "/v1/analytics/queries/probe", json={"sql": text}, headers=world.headers(world.own, "admin")
    )
    assert answer.status_code == 400, answer.text
    assert not (folder / f"tenant={world.own}" / "leak.csv").exists()
    missing = world.client.get(
        "/v1/analytics/queries/probe", headers=world.headers(world.own, "viewer")
    )
    assert missing.status_code == 404
