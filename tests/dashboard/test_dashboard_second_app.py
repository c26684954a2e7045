"""A deployment showing two applications: the eggs pipeline's, and a second one
defined only in the tests (``fanout_app``) whose pipeline runs elsewhere on the same
store. People pick one in the page; its labels, colours, ratio and nouns come from its
declaration, in real Chromium."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from dashboard_world import JWT_SECRET, PASSWORD, api_server
from fanout_app import APP as LEAVES
from fanout_app import CROPS, pipeline_file
from playwright.sync_api import Browser
from test_dashboard_browser import Pages, browser  # noqa: F401 - the module's browser fixture

from inferstream.api import ApiSettings
from inferstream.api.auth import hash_password
from inferstream.apps.eggs import APP as EGGS
from inferstream.bus import Record, open_bus
from inferstream.envelope import new_envelope, now_us
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultFilter, ResultRow
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow


def egg(tenant: str) -> ResultRow:
    stored = now_us()
    return ResultRow(
        id="egg-record-1", tenant=tenant, label="male", confidence=0.9, scores={"male": 0.9},
        model_name="egg_sexing", model_version="1.0.0", created_at_us=stored - 5000,
        ingested_at_us=stored - 4000, stored_at_us=stored, latency_ms=5.0, app=EGGS.name,
        root_id="egg-scan-1", subject="EGG-000001", group="TRAY-0001", head="sex",
    )  # fmt: skip


@pytest.fixture(scope="module")
def leaves_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """An API over the eggs pipeline that also shows the leaf application, whose own
    pipeline runs beside it on the same store: (URL, login)."""
    folder: Path = tmp_path_factory.mktemp("leaves")
    leaves = load_pipeline(pipeline_file(folder, f"sqlite:///{folder / 'leaves-bus.db'}"))
    spec = load_pipeline(EGGS.pipeline_path()).with_urls(
        bus=f"sqlite:///{folder / 'bus.db'}", store=f"sqlite:///{folder / 'results.db'}",
        blobs=f"file://{folder / 'blobs'}",
    )  # fmt: skip
    settings = ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6)
    shown = replace(settings, also_apps=(LEAVES,))
    with api_server(shown) as (base_url, app), pipeline_threads(leaves, replicas=1):
        services = app.state.services
        tenant = f"orchard-{uuid.uuid4().hex[:6]}"
        services.accounts.create_tenant(tenant)
        services.accounts.create_user(tenant, "viewer", hash_password(PASSWORD), "viewer")
        services.store.upsert_results([egg(tenant)])
        _fly_the_drone(leaves.bus, tenant, photos=4)
        deadline = time.monotonic() + 120  # a generous bound, not a speed check
        while services.store.count_results(tenant, ResultFilter(app=LEAVES.name)) < 4 * CROPS:
            assert time.monotonic() < deadline, "the leaf pipeline did not store its crops"
            time.sleep(0.1)
        yield base_url, f"{tenant}/viewer"


def _fly_the_drone(bus_url: str, tenant: str, photos: int) -> None:
    """Photos straight onto the leaf pipeline's topic, as its own ingest would put them."""
    bus = open_bus(bus_url)
    try:
        envelopes = [
            new_envelope(png(n), "image/png", tenant=tenant,
                         attributes={"field": f"F{n % 2 + 1}", "drone": "drone-7"})
            for n in range(photos)
        ]  # fmt: skip
        bus.produce(
            "photos", [Record(env.id.encode(), env.SerializeToString()) for env in envelopes]
        )
    finally:
        bus.close()


def png(n: int) -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((24, 32), 10 * n, np.uint8))
    assert ok
    return bytes(encoded)


def test_people_pick_an_application_and_the_page_speaks_its_words(
    browser: Browser,  # noqa: F811 - the imported fixture
    leaves_world: tuple[str, str],
) -> None:
    base_url, login = leaves_world
    pages = Pages(browser, base_url)
    try:
        page = pages.signed_in(login)
        # The pipeline's own application first: the eggs' words, the one egg.
        page.wait_for_function("() => window.inferstreamDashboard.last.app.name === 'eggs'")
        assert page.locator("#mix-title").inner_text() == "Prediction mix per tray"
        assert page.locator("#app-pick").is_visible()
        options = page.eval_on_selector_all("#app-select option", "o => o.map(x => x.value)")
        assert options == ["eggs", LEAVES.name]
        page.select_option("#app-select", LEAVES.name)
        page.wait_for_function(
            f"() => window.inferstreamDashboard.last.app.name === '{LEAVES.name}'"
        )
        page.wait_for_function("() => Chart.getChart('chart-mix').data.labels.length === 2")
        # Its panels: the ones it declares, no accuracy or confidence.
        assert page.locator("[data-panel=accuracy]").is_hidden()
        assert page.locator("[data-panel=confidence]").is_hidden()
        assert page.locator("[data-panel=mix]").is_visible()
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
        assert "Rust" in newest and "Healthy" in newest and "EGG" not in newest
        page.select_option("#app-select", "eggs")  # and back
        page.wait_for_function("() => window.inferstreamDashboard.last.app.name === 'eggs'")
        assert page.locator("[data-panel=accuracy]").is_visible()
        assert "EGG-000001" in page.locator("#table-newest tbody").inner_text()
    finally:
        pages.close()
    assert pages.errors == []
