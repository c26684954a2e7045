"""The dashboard of a tenant another shares records with, in real Chromium, on each
store: the shared record is among the newest, marked with its owner and masked; it opens
through the record route, without the image the grant withholds; a record outside the
grant and a third tenant see nothing of it; after the revocation the next snapshots drop
it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dashboard_world import JWT_SECRET, PASSWORD, api_server
from pg_testing import POSTGRES_URL, private_schema
from playwright.sync_api import Browser
from test_dashboard_browser import Pages, browser  # noqa: F401 - the module's browser fixture

from inferstream.api import ApiSettings
from inferstream.api.auth import hash_password
from inferstream.apps.eggs import APP as EGGS
from inferstream.envelope import now_us
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultRow, ResultsStore
from inferstream.store.sharing import Condition, Sharing

pytestmark = pytest.mark.slow

DAY_US = 86_400_000_000
SHARED_ROW = "#table-newest tr[data-shared-from]"


@dataclass
class SharedWorld:
    base_url: str
    store: ResultsStore
    owner: str
    grantee: str
    third: str


def egg(tenant: str, n: int, tray: str) -> ResultRow:
    stored = now_us() - n * 1000
    return ResultRow(
        id=f"egg-record-{n}", tenant=tenant, label="male", confidence=0.9, scores={"male": 0.9},
        model_name="egg_sexing", model_version="1.0.0", created_at_us=stored - 5000,
        ingested_at_us=stored - 4000, stored_at_us=stored, latency_ms=5.0, app=EGGS.name,
        root_id=f"egg-scan-{n}", subject=f"EGG-00000{n}", group=tray, source="SCANNER-01",
        head="sex", attributes={"egg_id": f"EGG-00000{n}", "tray": tray, "scanner": "SCANNER-01"},
    )  # fmt: skip


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Each store in turn (the rules are the store's: RLS on PostgreSQL, the WHERE clause
    on SQLite)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sharing-store') / 'results.db'}"
        return
    with private_schema(POSTGRES_URL, "dashshare") as url:
        yield url


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory: pytest.TempPathFactory, store_url: str) -> Iterator[SharedWorld]:
    """The API alone (no pipeline: the records are written to the store) with a
    hatchery holding two records, a lab holding one, and a third tenant."""
    folder: Path = tmp_path_factory.mktemp("sharing")
    spec = load_pipeline(EGGS.pipeline_path()).with_urls(
        bus=f"sqlite:///{folder / 'bus.db'}", store=store_url, blobs=f"file://{folder / 'blobs'}"
    )
    settings = ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6)
    with api_server(settings) as (base_url, app):
        services = app.state.services
        suffix = uuid.uuid4().hex[:6]
        owner, grantee, third = f"hatchery-{suffix}", f"lab-{suffix}", f"other-{suffix}"
        for tenant in (owner, grantee, third):
            services.accounts.create_tenant(tenant)
            services.accounts.create_user(tenant, "viewer", hash_password(PASSWORD), "viewer")
        services.store.upsert_results(
            [egg(owner, 1, "TRAY-0012"), egg(owner, 2, "TRAY-0030"), egg(grantee, 3, "TRAY-0100")]
        )
        yield SharedWorld(base_url, services.store, owner, grantee, third)


def test_the_grantee_sees_the_shared_record_marked_until_the_revocation(
    browser: Browser,  # noqa: F811 - the imported fixture
    shared_world: SharedWorld,
) -> None:
    w = shared_world
    grant = Sharing(w.store).grant(
        w.owner, w.grantee, EGGS, expires_at_us=now_us() + DAY_US, created_by="test",
        conditions=[Condition("tray", "text", "TRAY-0010", "TRAY-0020")], images=False,
        masked=["egg_id"],
    )  # fmt: skip
    pages = Pages(browser, w.base_url)
    try:
        page = pages.signed_in(f"{w.grantee}/viewer")
        page.wait_for_selector(SHARED_ROW, timeout=10_000)
        rows = page.eval_on_selector_all(
            "#table-newest tbody tr",
            "rows => rows.map(r => [r.dataset.scanId, r.dataset.sharedFrom])",
        )
        assert sorted(rows, key=str) == sorted(
            [["egg-scan-1", w.owner], ["egg-scan-3", None]], key=str
        )
        shared = page.locator(SHARED_ROW)
        assert f"shared by {w.owner}" in shared.inner_text()
        newest = page.locator("#table-newest tbody").inner_text()
        assert "EGG-000001" not in newest and "TRAY-0030" not in newest  # masked; outside
        shared.click()
        page.locator("#scan-panel").wait_for(state="visible")
        page.wait_for_function("() => document.getElementById('scan-facts').children.length > 0")
        facts = page.locator("#scan-facts").inner_text()
        assert "Shared by" in facts and w.owner in facts and "EGG-000001" not in facts
        assert page.eval_on_selector("#scan-image", "img => img.getAttribute('src')") is None
        assert page.locator("#scan-error").inner_text() == ""
        page.keyboard.press("Escape")

        other = pages.signed_in(f"{w.third}/viewer")
        assert other.locator("#table-newest tbody tr").count() == 0
        assert w.owner not in other.locator("body").inner_text()

        Sharing(w.store).revoke(w.owner, grant.id, actor="test")
        page.wait_for_function(f"() => !document.querySelector('{SHARED_ROW}')", timeout=10_000)
        assert w.owner not in page.locator("#table-newest").inner_text()
    finally:
        pages.close()
    assert pages.errors == []
