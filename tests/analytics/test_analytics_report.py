"""The daily report: rendered in real headless Chromium (Debian's ``chromium``), its plots
there and its numbers the store's; written by the chore for yesterday, once."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from analytics_testing import DAY0_US, HOUR_US, KnownRun
from playwright.sync_api import Browser, Page, sync_playwright

from inferstream.analytics.chore import analytics_chore
from inferstream.analytics.export import STATE_FILE
from inferstream.analytics.report import report_path, write_report
from inferstream.store import ResultsStore

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
DAY0 = dt.date(2026, 3, 10)
MINUTE_US = 60_000_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield launched
        launched.close()


def _table(page: Page, table_id: str) -> list[list[str]]:
    rows = page.locator(f"#{table_id} tbody tr")
    return [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]


def test_the_report_renders_with_its_plots_and_the_stores_numbers(
    store: ResultsStore, browser: Browser, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    acme, globex = f"acme-{suffix}", f"globex-{suffix}"
    known = KnownRun(store)
    first = known.scans(acme, 30, start_us=DAY0_US + 10 * HOUR_US, group="TRAY-1")
    known.scans(acme, 20, start_us=DAY0_US + 14 * HOUR_US, group="TRAY-2")
    known.scans(acme, 4, start_us=DAY0_US + 26 * HOUR_US, group="TRAY-3")  # the next day
    known.scans(globex, 9, start_us=DAY0_US + 10 * HOUR_US, group="TRAY-9")
    known.labels(first[:10], DAY0_US - HOUR_US)  # some labels before the day
    known.labels(first[10:], DAY0_US + 12 * HOUR_US)
    known.dead_letters(acme, 5, at_us=DAY0_US + HOUR_US)
    path = write_report(store, tmp_path, acme, DAY0)
    assert path == report_path(tmp_path, acme, DAY0)

    errors: list[str] = []
    page = browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(path.as_uri())
    assert acme in page.title()
    for section in ("volume", "mix", "accuracy", "dead-letters"):
        assert page.locator(f"#{section} .plot svg").count() >= 1, section
        assert page.locator(f"#{section} .plot svg").first.bounding_box() is not None
    assert page.locator("#mix .plot svg").count() == 2  # one plot per group
    assert page.locator("#volume h2").inner_text() == "Volume: 50 records"

    volume = {int(h): int(n) for h, n in _table(page, "volume-table")}
    stored = Counter((r.stored_at_us - DAY0_US) // HOUR_US for r in _day_rows(store, acme))
    assert {h: n for h, n in volume.items() if n} == dict(stored) == {10: 30, 14: 20}

    mix = {(g, label): int(n) for g, label, n in _table(page, "mix-table")}
    assert mix == {(g, label): n for (t, label, g), n in known.written.items()
                   if t == acme and g != "TRAY-3"}  # fmt: skip

    accuracy = {
        (v, role): (int(n), int(c)) for _, v, role, n, c, _ in _table(page, "accuracy-table")
    }
    expected = {(a.model_version, a.role): (a.labelled, a.correct)
                for a in store.accuracy_by_model_version(acme)}  # fmt: skip
    assert accuracy == expected and sum(n for n, _ in accuracy.values()) > 0

    letters = Counter(d.error_type for d in store.list_dead_letters(acme, limit=100).items)
    assert {e: int(n) for _, e, n in _table(page, "dead-letters-table")} == dict(letters)
    assert "TRAY-9" not in page.content() and globex not in page.content()
    assert errors == []
    page.close()


def _day_rows(store: ResultsStore, tenant: str) -> list[object]:
    rows = store.list_results(tenant, limit=1000).items
    return [r for r in rows if DAY0_US <= r.stored_at_us < DAY0_US + 24 * HOUR_US]


def test_the_chore_exports_and_writes_yesterdays_reports_once(
    store: ResultsStore, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    tenants = (f"acme-{suffix}", f"globex-{suffix}")
    known = KnownRun(store)
    for tenant in tenants:
        known.scans(tenant, 3, start_us=DAY0_US + 5 * MINUTE_US, group="TRAY-1")
    today = DAY0 + dt.timedelta(days=1)
    done = analytics_chore(store, tmp_path, today=today, settle_s=0)
    assert "exported 6 records" in done[0]
    assert sorted(p.parent.name for p in (tmp_path / "reports").glob("*/*.html")) == sorted(tenants)
    assert (tmp_path / STATE_FILE).exists()
    again = analytics_chore(store, tmp_path, today=today, settle_s=0)
    assert again == [again[0]] and "exported 0 records" in again[0]


def test_the_scheduled_chore_refuses_a_url_and_says_what_to_do(tmp_path: Path) -> None:
    """The chore keeps its reports and saved queries in a folder: an ``s3://`` value of
    ``INFERSTREAM_ANALYTICS_DIR`` once became a local folder named ``s3:``."""
    from inferstream.apps.eggs import APP
    from inferstream.errors import ConfigError
    from inferstream.pipeline import load_pipeline
    from inferstream.runner import analytics

    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}", store=f"sqlite:///{tmp_path / 'r.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="analytics export PIPELINE --to s3://"):
        analytics(spec, "s3://bucket/prefix")
    assert not (tmp_path / "r.db").exists() and not Path("s3:").exists()
