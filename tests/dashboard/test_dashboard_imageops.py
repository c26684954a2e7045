"""The imageops application on the live dashboard, in real Chromium: its jobs sent
through its own API route and processed by its pipeline, shown with its words and the
panels it has data for (no prediction: no mix, confidence, accuracy or prediction
columns), and a row opens the uploaded image."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_world import JWT_SECRET, PASSWORD, api_server
from playwright.sync_api import Browser
from test_dashboard_browser import ARTIFACTS, Pages, browser  # noqa: F401 - the browser fixture

from inferstream.api import ApiSettings
from inferstream.api.auth import hash_password, issue_key
from inferstream.apps.imageops import APP
from inferstream.apps.imageops.client import ImageopsClient
from inferstream.apps.imageops.images import encoded
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultFilter
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow
ACTIONS = {"operations": [["resize", "200x300"], ["split", True], ["blur", "gaussian"]],
           "output": "jpg"}  # fmt: skip


@pytest.fixture(scope="module")
def imageops_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, list]]:
    """The imageops API and pipeline with three jobs done: (URL, login, job ids)."""
    folder: Path = tmp_path_factory.mktemp("imageops-dashboard")
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{folder / 'bus.db'}", store=f"sqlite:///{folder / 'results.db'}",
        blobs=f"file://{folder / 'blobs'}",
    )  # fmt: skip
    settings = ApiSettings(spec, "images.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6)
    with api_server(settings) as (base_url, app), pipeline_threads(spec, replicas=1):
        services = app.state.services
        tenant = f"studio-{uuid.uuid4().hex[:6]}"
        services.accounts.create_tenant(tenant)
        services.accounts.create_user(tenant, "viewer", hash_password(PASSWORD), "viewer")
        key = issue_key(services.accounts, tenant, "client", "device").secret
        client = ImageopsClient(base_url, key)
        images = [("photo.png", encoded(512, 512, n)) for n in range(2)]
        jobs = [client.submit(ACTIONS, images)["job"] for _ in range(3)]
        deadline = time.monotonic() + 120  # a generous bound, not a speed check
        while services.store.count_results(tenant, ResultFilter(app=APP.name)) < 3 * 2 * 4:
            assert time.monotonic() < deadline, "the imageops pipeline did not store its outputs"
            time.sleep(0.1)
        yield base_url, f"{tenant}/viewer", jobs


def test_the_imageops_view_shows_its_jobs_with_its_panels(
    browser: Browser,  # noqa: F811 - the imported fixture
    imageops_world: tuple[str, str, list],
) -> None:
    base_url, login, jobs = imageops_world
    pages = Pages(browser, base_url)
    try:
        page = pages.signed_in(login)
        page.wait_for_function("() => window.inferstreamDashboard.last.app.name === 'imageops'")
        page.wait_for_function("() => window.inferstreamDashboard.last.totals.scans >= 24")
        for panel in ("throughput", "stages", "newest"):
            assert page.locator(f"[data-panel={panel}]").is_visible(), panel
        for panel in ("mix", "confidence", "accuracy"):
            assert page.locator(f"[data-panel={panel}]").is_hidden(), panel
        assert page.locator("#kpi-ratio-box").is_hidden()
        assert page.locator("#kpi-scans").inner_text() == "24"
        assert page.locator("#col-subject").inner_text() == "File"
        assert page.locator("#col-group").inner_text() == "Job"
        assert page.locator("#table-newest th.prediction").first.is_hidden()
        rows = page.locator("#table-newest tbody tr")
        assert rows.count() == 20
        newest = page.locator("#table-newest tbody").inner_text()
        assert "photo.png" in newest and any(job in newest for job in jobs)
        assert rows.first.locator("td").count() == 3  # time, file, job: no prediction
        stages = page.locator("#table-stages").inner_text()
        assert "apply" in stages and "store" in stages
        page.screenshot(path=str(ARTIFACTS / "dashboard-imageops.png"), full_page=True)
        rows.first.click()
        page.locator("#scan-panel").wait_for(state="visible")
        page.wait_for_function("() => document.getElementById('scan-image').naturalWidth === 512")
        facts = page.locator("#scan-facts").inner_text()
        assert "processed" in facts and "Prediction" not in facts
        assert "apply" in page.locator("#scan-lineage").inner_text()
    finally:
        pages.close()
    assert pages.errors == []
