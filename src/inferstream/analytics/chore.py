"""The scheduled analytics chore: export what is new, then yesterday's daily report of
every tenant that has none yet. ``inferstream housekeep`` runs it when
``INFERSTREAM_ANALYTICS_DIR`` names the export folder (the CronJob sets it)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from inferstream.analytics.export import DEFAULT_SETTLE_S, discover_tenants, export
from inferstream.analytics.report import report_path, write_report
from inferstream.store import ResultsStore


def analytics_chore(
    store: ResultsStore,
    folder: Path,
    *,
    today: dt.date | None = None,
    settle_s: float = DEFAULT_SETTLE_S,
) -> list[str]:
    """One round; each thing done said in a line."""
    done = [f"analytics: {export(store, folder, settle_s=settle_s).summary()}"]
    yesterday = (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=1)
    for tenant in discover_tenants(store):
        if not report_path(folder, tenant, yesterday).exists():
            path = write_report(store, folder, tenant, yesterday)
            done.append(f"analytics: wrote {path}")
    return done
