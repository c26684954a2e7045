"""The leaves application on the dashboard, in real headless Chromium: the API serves
the leaves pipeline, a simulated field trial runs through it, and a viewer sees its
grades in its own words (grades per day, leaf ids, its colours)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_world import JWT_SECRET, PASSWORD, api_server
from playwright.sync_api import Browser
from test_dashboard_browser import Pages, browser  # noqa: F401 - the module's browser fixture

from inferstream.api import ApiSettings
from inferstream.api.auth import hash_password
from inferstream.apps.leaves import APP
from inferstream.apps.leaves.field import send_photos
from inferstream.apps.leaves.simulator import AREAS, DISEASES, simulate
from inferstream.blobs import open_blob_store
from inferstream.bus import open_bus
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultFilter
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, list[str]]]:
    """(URL, login, dates) of an API over a leaves pipeline that graded a small trial."""
    folder: Path = tmp_path_factory.mktemp("leaves-dashboard")
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{folder / 'bus.db'}", store=f"sqlite:///{folder / 'results.db'}",
        blobs=f"file://{folder / 'blobs'}",
    )  # fmt: skip
    settings = ApiSettings(spec, "photos", JWT_SECRET, rate_per_s=1e6, burst=10**6)
    tenant = f"farm-{uuid.uuid4().hex[:6]}"
    photos = list(simulate(2, 2, seed=21, tenant=tenant))
    leaves = sum(len(p.leaves) for p in photos)
    with api_server(settings) as (base_url, app), pipeline_threads(spec, replicas=1):
        services = app.state.services
        services.accounts.create_tenant(tenant)
        services.accounts.create_user(tenant, "viewer", hash_password(PASSWORD), "viewer")
        bus = open_bus(spec.bus)
        try:
            send_photos(bus, open_blob_store(spec.blobs), photos)
        finally:
            bus.close()
        want = leaves * (len(DISEASES) + 1)
        deadline = time.monotonic() + 120  # a generous bound, not a speed check
        while services.store.count_results(tenant, ResultFilter(app=APP.name)) < want:
            assert time.monotonic() < deadline, "the leaves pipeline did not store its grades"
            time.sleep(0.1)
        yield base_url, f"{tenant}/viewer", sorted({p.date for p in photos})


def test_the_dashboard_shows_the_trials_grades(
    browser: Browser,  # noqa: F811 - the imported fixture
    trial: tuple[str, str, list[str]],
) -> None:
    base_url, login, dates = trial
    pages = Pages(browser, base_url)
    try:
        page = pages.signed_in(login)
        page.wait_for_function("() => window.inferstreamDashboard.last.app.name === 'leaves'")
        page.wait_for_function("() => Chart.getChart('chart-mix').data.labels.length > 0")
        assert page.locator("#mix-title").inner_text() == "Prediction mix per day"
        assert page.evaluate("() => Chart.getChart('chart-mix').data.labels") == dates
        legend = page.evaluate(
            "() => Chart.getChart('chart-mix').data.datasets.map(d => [d.label, d.backgroundColor])"
        )
        assert legend == [[label.shown, label.colour] for label in APP.heads[0].labels]
        assert page.locator("[data-panel=accuracy]").is_hidden()
        newest = page.locator("#table-newest tbody").inner_text()
        assert "P00" in newest and "Grade" in newest
        page.screenshot(path=str(Path(__file__).resolve().parents[2] / "test-artifacts"
                                 / "dashboard-leaves.png"), full_page=True)  # fmt: skip
    finally:
        pages.close()
    assert pages.errors == []


def test_the_dashboard_draws_the_trend_view_the_application_declares(
    browser: Browser,  # noqa: F811 - the imported fixture
    trial: tuple[str, str, list[str]],
) -> None:
    """The view comes from the declaration (APP.views), its data from GET /trend."""
    base_url, login, dates = trial
    pages = Pages(browser, base_url)
    try:
        page = pages.signed_in(login)
        page.wait_for_function("() => Chart.getChart('view-0-chart')?.data.datasets.length > 0")
        assert page.locator("#view-0-title").inner_text() == APP.views[0].title
        chart = page.evaluate(
            "() => { const c = Chart.getChart('view-0-chart');"
            " return {labels: c.data.labels, series: c.data.datasets.map(d => d.label),"
            " y: c.options.scales.y.title.text,"
            " points: c.data.datasets.map(d => d.data.filter(v => v !== null).length)}; }"
        )
        assert chart["labels"] == dates
        assert chart["series"] == [f"{disease}, {area}" for disease in DISEASES for area in AREAS]
        assert chart["y"].startswith("Mean grade")
        assert set(chart["points"]) == {len(dates)}
        assert page.locator("#view-0-error").inner_text() == ""
    finally:
        pages.close()
    assert pages.errors == []
