"""The live dashboard in real headless Chromium (Debian's ``chromium``), against the real API.

One module-scoped world (API on a loopback port, embedded bus, SQLite store, two
tenants) and one browser; each test opens its own browser contexts, so sessions
(sessionStorage) never mix. Every page's console errors and uncaught exceptions are
collected and must stay empty.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_world import PASSWORD, DashboardWorld, running_world
from playwright.sync_api import Browser, Page, sync_playwright

from inferstream.apps.eggs import APP

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardWorld]:
    with running_world(tmp_path_factory.mktemp("dashboard")) as started:
        rows = []
        for tray in ("TRAY-0041", "TRAY-0042", "TRAY-0043"):
            rows += started.add_scans(started.a, 8, tray)
        started.add_feedback(rows[:12])
        started.add_dead_letter(started.a, "classify")
        started.add_scans(started.b, 5, "TRAY-0900")
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield launched
        launched.close()


class Pages:
    """Opens pages in fresh contexts and records what each browser console says."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url
        self.errors: list[str] = []
        #: Console messages a test expects (e.g. the browser's own log of a 401).
        self.expected: list[str] = []
        self._contexts: list[Any] = []

    def open(self, width: int = 1600, height: int = 1000) -> Page:
        context = self.browser.new_context(
            base_url=self.base_url, viewport={"width": width, "height": height}
        )
        self._contexts.append(context)
        page = context.new_page()
        page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.goto("/dashboard")
        return page

    def signed_in(self, login: str, **size: int) -> Page:
        page = self.open(**size)
        page.get_by_label("Username").fill(login)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_function("() => window.inferstreamDashboard.snapshots > 0", timeout=15_000)
        return page

    def close(self) -> None:
        for context in self._contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser, world: DashboardWorld) -> Iterator[Pages]:
    opened = Pages(browser, world.base_url)
    yield opened
    opened.close()
    unexpected = [e for e in opened.errors if not any(x in e for x in opened.expected)]
    assert unexpected == []


def newest_ids(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "#table-newest tbody tr", "rows => rows.map(r => r.dataset.scanId)"
    )


def test_login_shows_the_live_dashboard_of_the_tenant(pages: Pages, world: DashboardWorld) -> None:
    page = pages.signed_in(world.login(world.a))
    assert page.locator("#login-view").is_hidden()
    assert page.locator("#tenant-name").inner_text() == f"({world.a})"
    shown = newest_ids(page)
    assert len(shown) == 20
    assert set(shown) <= set(world.ids[world.a])
    assert page.locator("#status").inner_text().startswith("Live")


def test_wrong_password_is_refused_on_the_page(pages: Pages, world: DashboardWorld) -> None:
    pages.expected.append("status of 401")  # Chromium logs the refused login request
    page = pages.open()
    page.get_by_label("Username").fill(world.login(world.a))
    page.get_by_label("Password").fill("not the password at all")
    with page.expect_response("**/auth/token") as answer:
        page.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 401
    assert "Wrong username or password" in page.locator("#login-error").inner_text()
    assert page.locator("#dashboard").is_hidden()


def test_a_scan_processed_by_the_pipeline_appears_within_two_seconds(
    pages: Pages, world: DashboardWorld
) -> None:
    page = pages.signed_in(world.login(world.a))
    (scan_id,) = world.ingest(world.a, 1, "TRAY-0044")
    accepted = time.monotonic()  # the API answered 202: the scan is on the bus
    page.wait_for_selector(f'#table-newest tr[data-scan-id="{scan_id}"]', timeout=2_000)
    assert time.monotonic() - accepted < 2.0
    row = page.locator(f'#table-newest tr[data-scan-id="{scan_id}"]')
    assert "TRAY-0044" in row.inner_text()
    (stored,) = world.store.results_of_root(world.a, scan_id)
    assert stored.model_name == "egg_sexing"


def test_charts_render_with_data(pages: Pages, world: DashboardWorld) -> None:
    page = pages.signed_in(world.login(world.a))
    page.wait_for_function(
        "() => Chart.getChart('chart-throughput').data.datasets[0].data.some(v => v > 0)"
    )
    charts = page.evaluate(
        """() => ['chart-throughput', 'chart-mix', 'chart-confidence'].map(id => {
            const chart = Chart.getChart(id);
            const canvas = document.getElementById(id);
            const pixels = canvas.getContext('2d')
                .getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
            return {
                id,
                total: chart.data.datasets.reduce(
                    (sum, d) => sum + d.data.reduce((s, v) => s + (v || 0), 0), 0),
                labels: chart.data.labels.length,
                painted,
                axes: Object.values(chart.options.scales).map(s => s.title.text),
            };
        })"""
    )
    by_id = {chart["id"]: chart for chart in charts}
    assert by_id["chart-throughput"]["labels"] == 300
    assert by_id["chart-mix"]["labels"] >= 3
    assert by_id["chart-mix"]["total"] >= 24
    assert by_id["chart-confidence"]["total"] >= 24
    for chart in charts:
        assert chart["painted"] > 1000, chart["id"]
        assert all(chart["axes"]), chart["id"]
    assert "ms" in " ".join(by_id["chart-throughput"]["axes"])
    kpi = page.locator("#kpi-ratio").inner_text()
    assert kpi.endswith("%")
    # The page takes its words and colours from the application's declaration.
    assert page.locator("#kpi-ratio-title").inner_text() == "Female ratio"
    assert page.locator("#mix-title").inner_text() == "Prediction mix per tray"
    assert page.locator("#col-subject").inner_text() == "Egg"
    legend = page.evaluate(
        "() => Chart.getChart('chart-mix').data.datasets.map(d => [d.label, d.backgroundColor])"
    )
    assert legend == [[label.shown, label.colour] for label in APP.heads[0].labels]
    accuracy = page.locator("#table-accuracy tbody tr")
    assert accuracy.count() >= 1
    assert "classify" in page.locator("#table-stages").inner_text()


def test_clicking_a_scan_shows_its_image_prediction_and_lineage(
    pages: Pages, world: DashboardWorld
) -> None:
    page = pages.signed_in(world.login(world.a))
    first = page.locator("#table-newest tbody tr").first
    scan_id = first.get_attribute("data-scan-id")
    first.click()
    panel = page.locator("#scan-panel")
    panel.wait_for(state="visible")
    page.wait_for_function(
        "() => document.getElementById('scan-image').complete && "
        "document.getElementById('scan-image').naturalWidth > 0"
    )
    assert page.eval_on_selector("#scan-image", "img => img.src").startswith("blob:")
    facts = page.locator("#scan-facts").inner_text()
    assert "Prediction" in facts and "egg_sexing" in facts
    assert page.locator("#scan-scores li").count() == 3
    assert page.locator("#scan-lineage li").count() >= 1
    assert "classify" in page.locator("#scan-lineage").inner_text()
    assert scan_id in page.locator("#scan-title").inner_text()
    page.keyboard.press("Escape")
    panel.wait_for(state="hidden")


def test_tenant_b_never_sees_tenant_a(pages: Pages, world: DashboardWorld) -> None:
    page_a = pages.signed_in(world.login(world.a))
    page_b = pages.signed_in(world.login(world.b))
    (row,) = world.add_scans(world.a, 1, "TRAY-0045")
    page_a.wait_for_selector(f'#table-newest tr[data-scan-id="{row.root_id}"]', timeout=10_000)
    seen = page_b.evaluate("() => window.inferstreamDashboard.snapshots")
    page_b.wait_for_function(
        "(seen) => window.inferstreamDashboard.snapshots >= seen + 2", arg=seen
    )
    received = page_b.evaluate("() => window.inferstreamDashboard.received")
    assert {r["tenant"] for r in received} == {world.b}
    shown_to_b = {scan_id for r in received for scan_id in r["ids"]}
    assert shown_to_b <= set(world.ids[world.b])
    assert not shown_to_b & set(world.ids[world.a])
    text_b = page_b.locator("body").inner_text()
    assert world.a not in text_b
    assert not any(tray in text_b for tray in ("TRAY-0041", "TRAY-0042", "TRAY-0045"))


def test_socket_refuses_a_bad_token_and_a_device(pages: Pages, world: DashboardWorld) -> None:
    page = pages.open()
    close_code = """async (token) => await new Promise(resolve => {
        const ws = new WebSocket(`ws://${location.host}/v1/live?token=${token}`);
        ws.onclose = event => resolve(event.code);
    })"""
    assert page.evaluate(close_code, "not-a-jwt") == 4401
    token = page.evaluate(
        """async ([user, password]) => {
            const body = new URLSearchParams({username: user, password});
            const answer = await fetch('/auth/token', {method: 'POST', body});
            return (await answer.json()).access_token;
        }""",
        [world.login(world.a, "scanner"), PASSWORD],
    )
    assert page.evaluate(close_code, token) == 4403


@pytest.mark.parametrize(
    ("width", "height", "name"), [(1440, 900, "dashboard"), (2560, 1440, "wall")]
)
def test_screenshot_at_laptop_and_wall_sizes(
    pages: Pages, world: DashboardWorld, width: int, height: int, name: str
) -> None:
    page = pages.signed_in(world.login(world.a), width=width, height=height)
    page.wait_for_function(
        "() => Chart.getChart('chart-throughput').data.datasets[0].data.some(v => v > 0)"
    )
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000


def test_the_models_card_shows_versions_aliases_and_their_changes(
    pages: Pages, world: DashboardWorld, tmp_path: Path
) -> None:
    from test_registry import relabelled

    from inferstream.blobs import LocalBlobStore
    from inferstream.registry import ModelRegistry

    registry = ModelRegistry(world.store, LocalBlobStore(tmp_path / "blobs"))
    registry.register(*relabelled("1.1.0"), actor="cli:ops")
    registry.set_alias("egg_sexing", "challenger", "1.0.0", actor="cli:ops", reason="first")
    registry.set_alias("egg_sexing", "challenger", "1.1.0", actor="cli:ops",
                       reason="retrained on tray 41")  # fmt: skip
    page = pages.signed_in(world.login(world.a))
    page.wait_for_function(
        "() => [...document.querySelectorAll('#table-models tbody tr')].length >= 2"
    )
    rows = page.evaluate(
        "() => [...document.querySelectorAll('#table-models tbody tr')]"
        ".map(tr => [...tr.cells].slice(0, 3).map(td => td.textContent))"
    )
    assert ["egg_sexing", "1.1.0", "challenger"] in rows
    assert ["egg_sexing", "1.0.0-int8", "champion"] in rows  # the workers' own, adopted
    changes = page.locator("#table-model-changes tbody tr").all_inner_texts()
    assert "alias @challenger 1.0.0 → 1.1.0" in changes[0]
    assert "retrained on tray 41" in changes[0] and "cli:ops" in changes[0]
    # The versions over time: the acting version's mean confidence (no labels in this
    # world yet: the estimate), and the alias moves above as triangles with their texts.
    page.wait_for_function(
        "() => (Chart.getChart('chart-models')?.data.datasets || []).length >= 2"
    )
    drawn = page.evaluate(
        "() => Chart.getChart('chart-models').data.datasets"
        ".map(d => [d.label, d.data.filter(v => v !== null).length, (d.events || []).flat()])"
    )
    lines = {label: points for label, points, _ in drawn}
    assert lines.get("1.0.0-int8 (champion) mean confidence", 0) >= 1, drawn
    (marks,) = [texts for label, _, texts in drawn if label == "changes"]
    assert any("alias @challenger: 1.0.0 -> 1.1.0" in text for text in marks), marks
    assert page.evaluate("() => document.getElementById('chart-models').dataset.model") == (
        "egg_sexing"
    )
