"""The cameras application's live facility state on the dashboard, in real headless
Chromium. First with states of known values stored as the pipeline stores them: the
viewer sees the newest as a schematic (a lane per track, the locomotive on it, the
cameras beneath) and a table, both following the next state. Then the whole way: the
simulator's frames through the cameras pipeline on the embedded bus, and the page
draws the newest state the pipeline fused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_world import JWT_SECRET, PASSWORD, api_server
from flow_testing import wait_for
from playwright.sync_api import Browser
from test_dashboard_browser import Pages, browser  # noqa: F401 - the module's browser fixture

from inferstream.api import ApiSettings
from inferstream.api.auth import hash_password
from inferstream.apps.cameras import APP
from inferstream.apps.cameras.fusion import Sighting, fuse
from inferstream.apps.cameras.layout import FacilityLayout
from inferstream.apps.cameras.routes import newest_state, state_lanes
from inferstream.apps.cameras.simulator import FacilitySimulator, SimSettings
from inferstream.bus import open_bus
from inferstream.envelope import now_us
from inferstream.pipeline import load_pipeline
from inferstream.runner import ensure_topics
from inferstream.store import ResultFilter, ResultRow, ResultsStore
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow

LAYOUT = FacilityLayout()
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NONE = "\N{EN DASH}"  # what the page shows for an empty cell
ROWS_WITH_A_LOCOMOTIVE = [
    ["0", "yes", "150.2", "12.5", "t0c0, t0c1, t0c2", "t0c3"],
    ["1", "no", NONE, NONE, NONE, NONE],
    ["2", "no", NONE, NONE, NONE, "t2c3"],
]


def _store_state(store: ResultsStore, tenant: str, n: int, sightings: list[Sighting]) -> None:
    """A fused state record with the attributes the ``fuse`` step stamps."""
    state = fuse(LAYOUT, sightings)
    at = now_us()
    label = "degraded" if state.degraded else "complete"
    store.upsert_results([
        ResultRow(
            id=f"{tenant}-state-{n}", tenant=tenant, label=label, confidence=1.0,
            scores={label: 1.0}, model_name="facility_fusion", model_version="1.0.0",
            created_at_us=at, ingested_at_us=at, stored_at_us=at + n, latency_ms=1.0,
            app=APP.name, subject=f"{LAYOUT.name}@{at}", group=LAYOUT.name, source="prod",
            head="record",
            attributes={"ref": f"{LAYOUT.name}@{at}", "facility": LAYOUT.name, "flow": "prod",
                        "window_start_us": str(at), "degraded": str(state.degraded).lower(),
                        "state": state.to_json()},
        )
    ])  # fmt: skip


@pytest.fixture(scope="module")
def facility(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, ResultsStore]]:
    """(URL, login, store) of an API serving the cameras pipeline, one state stored."""
    folder: Path = tmp_path_factory.mktemp("cameras-dashboard")
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{folder / 'bus.db'}", store=f"sqlite:///{folder / 'results.db'}",
        blobs=f"file://{folder / 'blobs'}",
    )  # fmt: skip
    settings = ApiSettings(spec, "camera.frames", JWT_SECRET, rate_per_s=1e6, burst=10**6)
    tenant = f"depot-{uuid.uuid4().hex[:6]}"
    with api_server(settings) as (base_url, app):
        services = app.state.services
        services.accounts.create_tenant(tenant)
        services.accounts.create_user(tenant, "viewer", hash_password(PASSWORD), "viewer")
        sightings = [
            Sighting("t0c0", 0, "tail", 12.53), Sighting("t0c1", 0, "body"),
            Sighting("t0c2", 0, "head", 150.25),
            *(Sighting(f"t1c{k}", 1, "empty") for k in range(4)),
            *(Sighting(f"t2c{k}", 2, "empty") for k in range(3)),
        ]  # fmt: skip
        _store_state(services.store, tenant, 1, sightings)
        yield base_url, f"{tenant}/viewer", services.store


def _drawn(page: object, kind: str) -> list[list[str]]:
    """The schematic's spans or marks as [lane, label, from, to, style]."""
    return page.evaluate(  # type: ignore[attr-defined, no-any-return]
        f"() => [...document.querySelectorAll('#view-0-lanes g.lane-{kind}')]"
        ".map(g => [g.dataset.lane, g.dataset.label, g.dataset.from, g.dataset.to,"
        " g.dataset.style])"
    )


def _table(page: object) -> list[list[str]]:
    return page.evaluate(  # type: ignore[attr-defined, no-any-return]
        "() => [...document.querySelectorAll('#view-1-table tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent))"
    )


def test_the_dashboard_shows_the_newest_facility_state_live(
    browser: Browser,  # noqa: F811 - the imported fixture
    facility: tuple[str, str, ResultsStore],
) -> None:
    base_url, login, store = facility
    pages = Pages(browser, base_url)
    try:
        page = pages.signed_in(login)
        page.wait_for_function("() => window.inferstreamDashboard.last.app.name === 'cameras'")
        page.wait_for_function("() => document.querySelectorAll('#view-1-table tbody tr').length")
        assert page.locator("#view-1-title").inner_text() == "Facility state now"
        headers = page.locator("#view-1-table thead th").all_inner_texts()
        assert headers == ["Track", "Locomotive", "Head (m)", "Tail (m)", "Cameras",
                           "Missing cameras"]  # fmt: skip
        assert _table(page) == ROWS_WITH_A_LOCOMOTIVE
        assert "degraded: t0c3, t2c3 silent" in page.locator("#view-1-note").inner_text()
        assert page.locator("#view-0-title").inner_text() == "Facility now"
        assert _drawn(page, "span") == [["Track 0", "locomotive", "12.5", "150.2", "item"]]
        silent = [m for m in _drawn(page, "mark") if m[4] == "alert"]
        assert [m[:2] for m in silent] == [["Track 0", "t0c3"], ["Track 2", "t2c3"]]
        assert len(_drawn(page, "mark")) == len(LAYOUT.cameras)
        # The locomotive leaves and every camera speaks: the page follows without a reload.
        tenant = login.partition("/")[0]
        _store_state(store, tenant, 2, [Sighting(c.name, c.track, "empty") for c in LAYOUT.cameras])
        page.wait_for_function(
            "() => document.querySelector('#view-1-note').textContent.endsWith('complete')"
        )
        assert [row[:2] for row in _table(page)] == [["0", "no"], ["1", "no"], ["2", "no"]]
        page.wait_for_function(
            "() => !document.querySelectorAll('#view-0-lanes g.lane-span').length"
        )
        assert {m[4] for m in _drawn(page, "mark")} == {"muted"}
        page.screenshot(path=str(ARTIFACTS / "dashboard-cameras.png"), full_page=True)
    finally:
        pages.close()
    assert pages.errors == []


def test_the_dashboard_draws_the_state_the_pipeline_fused_from_the_cameras(
    browser: Browser,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}", store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )  # fmt: skip
    settings = ApiSettings(spec, "camera.frames", JWT_SECRET, rate_per_s=1e6, burst=10**6)
    sim = FacilitySimulator(LAYOUT, SimSettings(duration_s=8.0, seed=3, dead_from=0.5))
    tenant = f"depot-{uuid.uuid4().hex[:6]}"
    with api_server(settings) as (base_url, app):
        services = app.state.services
        services.accounts.create_tenant(tenant)
        services.accounts.create_user(tenant, "viewer", hash_password(PASSWORD), "viewer")
        bus = open_bus(spec.bus)
        ensure_topics(bus, spec)
        pages = Pages(browser, base_url)
        try:
            with pipeline_threads(spec):
                epoch_us = (now_us() // 1_000_000 + 1) * 1_000_000
                emission = sim.emit(bus, tenant=tenant, run=uuid.uuid4().hex, epoch_us=epoch_us)
                windows = len(emission.window_starts(1000))
                of_prod = ResultFilter(attributes={"flow": "prod"})
                assert wait_for(
                    lambda: services.store.count_results(tenant, of_prod) >= windows, 60
                )
            newest = newest_state(services.store, tenant, "prod", None)
            assert newest is not None
            expected = state_lanes(newest)
            page = pages.signed_in(f"{tenant}/viewer")
            page.wait_for_function(
                "() => document.querySelectorAll('#view-0-lanes g.lane-mark').length === 12"
            )
            spans = [
                [lane["name"], s["label"], f"{s['from']:g}", f"{s['to']:g}", s["style"]]
                for lane in expected["lanes"]
                for s in lane["spans"]
            ]
            marks = [
                [lane["name"], m["label"], f"{m['from']:g}", f"{m['to']:g}", m["style"]]
                for lane in expected["lanes"]
                for m in lane["marks"]
            ]
            assert _drawn(page, "span") == spans and spans  # the depot is never empty here
            assert _drawn(page, "mark") == marks
            # The last state was fused after the dead camera stopped: marked as silent.
            assert ["Track 1", "t1c2", "120", "180", "alert"] in marks
            assert page.locator("#view-0-note").inner_text() == expected["note"]
            page.locator("[data-view='0']").screenshot(
                path=str(ARTIFACTS / "dashboard-cameras-schematic.png")
            )
        finally:
            pages.close()
            bus.close()
    assert pages.errors == []
