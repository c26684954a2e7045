"""The dashboard of a second application, defined only in the tests (``fanout_app``):
its labels, colours, ratio and nouns come from its declaration, in real Chromium."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dashboard_world import JWT_SECRET, PASSWORD, api_server
from fanout_app import APP as LEAVES
from playwright.sync_api import Browser
from test_dashboard_browser import Pages, browser  # noqa: F401 - the module's browser fixture

from inferstream.api import ApiSettings
from inferstream.api.auth import hash_password
from inferstream.apps.eggs import APP as EGGS
from inferstream.envelope import now_us
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultRow

pytestmark = pytest.mark.slow


def leaf(tenant: str, n: int, field: str, label: str) -> ResultRow:
    stored = now_us()
    return ResultRow(
        id=f"photo-{n // 3}-crop-{n % 3}", tenant=tenant, label=label, confidence=0.9,
        scores={label: 0.9}, model_name="grader", model_version="1", created_at_us=stored - 5000,
        ingested_at_us=stored - 4000, stored_at_us=stored, latency_ms=5.0, app=LEAVES.name,
        root_id=f"photo-{n // 3}", parent_id=f"photo-{n // 3}", subject=f"leaf-{n}",
        group=field, source="drone-7", head="grade",
        attributes={"leaf_id": f"leaf-{n}", "field": field, "drone": "drone-7", "crop": n % 3},
    )  # fmt: skip


@pytest.fixture(scope="module")
def leaves_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The API serving the leaf application, with records of one tenant: (URL, login)."""
    folder: Path = tmp_path_factory.mktemp("leaves")
    spec = load_pipeline(EGGS.pipeline_path()).with_urls(
        bus=f"sqlite:///{folder / 'bus.db'}", store=f"sqlite:///{folder / 'results.db'}",
        blobs=f"file://{folder / 'blobs'}",
    )  # fmt: skip
    settings = ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6)
    with api_server(replace(settings, app=LEAVES)) as (base_url, app):
        services = app.state.services
        tenant = f"orchard-{uuid.uuid4().hex[:6]}"
        services.accounts.create_tenant(tenant)
        services.accounts.create_user(tenant, "viewer", hash_password(PASSWORD), "viewer")
        labels = ["healthy", "healthy", "rust"]
        rows = [leaf(tenant, n, f"F{n % 2 + 1}", labels[n % 3]) for n in range(12)]
        services.store.upsert_results(rows)
        yield base_url, f"{tenant}/viewer"


def test_the_page_speaks_the_second_applications_words(
    browser: Browser,  # noqa: F811 - the imported fixture
    leaves_world: tuple[str, str],
) -> None:
    base_url, login = leaves_world
    pages = Pages(browser, base_url)
    try:
        page = pages.signed_in(login)
        page.wait_for_function("() => Chart.getChart('chart-mix').data.labels.length === 2")
        assert page.locator("#mix-title").inner_text() == "Prediction mix per field"
        assert page.locator("#kpi-ratio-title").inner_text() == "Healthy ratio"
        assert page.locator("#kpi-ratio").inner_text() == "66.7 %"
        assert page.locator("#col-subject").inner_text() == "Leaf"
        assert page.locator("#col-group").inner_text() == "Field"
        legend = page.evaluate(
            "() => Chart.getChart('chart-mix').data.datasets.map(d => [d.label, d.backgroundColor])"
        )
        head = LEAVES.heads[0]
        assert legend == [[label.shown, label.colour] for label in head.labels]
        assert page.evaluate("() => Chart.getChart('chart-mix').data.labels") == ["F1", "F2"]
        newest = page.locator("#table-newest tbody").inner_text()
        assert "leaf-11" in newest and "Rust" in newest and "egg" not in newest.lower()
    finally:
        pages.close()
    assert pages.errors == []
