"""The Parquet export queried with DuckDB counts what the store counts: first run,
incremental runs, a run that stopped part-way, rows committed late."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from analytics_testing import DAY0_US, HOUR_US, KnownRun, export_counts, store_counts

from inferstream.analytics.export import STATE_FILE, ExportError, export
from inferstream.analytics.query import open_export, run
from inferstream.apps.eggs import APP
from inferstream.cli import main
from inferstream.store import DeadLetterRow, ResultsStore


def ids_exported(folder: Path) -> list[str]:
    conn = open_export(folder)
    try:
        return [str(row[0]) for row in run(conn, "SELECT id FROM records").rows]
    finally:
        conn.close()


def test_export_counts_equal_the_stores_run_after_run(
    store: ResultsStore, tenants: tuple[str, str], tmp_path: Path
) -> None:
    acme, globex = tenants
    known = KnownRun(store)
    midnight = DAY0_US + 24 * HOUR_US
    first = known.scans(acme, 30, start_us=midnight - 15 * 60_000_000, group="TRAY-1")
    known.scans(globex, 17, start_us=DAY0_US, group="TRAY-9")
    known.labels(first, DAY0_US + 30 * HOUR_US)
    known.dead_letters(acme, 5, at_us=DAY0_US + HOUR_US)
    folder = tmp_path / "export"

    done = export(store, folder, settle_s=0, now=DAY0_US + 48 * HOUR_US)
    assert done.rows["records"] == 47
    assert export_counts(folder) == store_counts(store)
    assert sum(store_counts(store)["records"].values()) == 47
    days = {p.parent.name for p in (folder / f"tenant={acme}" / "records").glob("*/*/*.parquet")}
    assert days == {"date=2026-03-10", "date=2026-03-11"}

    # More scans, a correction of a label, more dead letters: only the new rows go out.
    later = DAY0_US + 49 * HOUR_US
    known.scans(acme, 12, start_us=later, group="TRAY-2")
    known.scans(globex, 4, start_us=later, group="TRAY-9")
    store.add_feedback(acme, first[0].subject or "", "male", app="eggs", head="sex", at_us=later)
    known.dead_letters(globex, 3, at_us=later)
    again = export(store, folder, settle_s=0, now=later + HOUR_US)
    assert again.rows["records"] == 16 and again.rows["feedback"] == 1
    assert export_counts(folder) == store_counts(store)
    ids = ids_exported(folder)
    assert len(ids) == len(set(ids)) == 63
    # A run with nothing new writes nothing.
    assert export(store, folder, settle_s=0, now=later + HOUR_US).files == 0


def test_a_row_committed_after_the_run_within_the_settle_margin_is_not_lost(
    store: ResultsStore, tenants: tuple[str, str], tmp_path: Path
) -> None:
    acme, _ = tenants
    known = KnownRun(store)
    known.scans(acme, 3, start_us=DAY0_US, group="TRAY-1")
    folder = tmp_path / "export"
    now = DAY0_US + HOUR_US
    assert export(store, folder, settle_s=60, now=now).rows["records"] == 3
    # Stamped 30 s before that run but committed after it (a slow writer's transaction).
    known.scans(acme, 1, start_us=now - 30_000_000, group="TRAY-1")
    assert export(store, folder, settle_s=60, now=now + HOUR_US).rows["records"] == 1
    assert export_counts(folder) == store_counts(store)


def test_a_run_that_stops_part_way_is_finished_without_doubles(
    store: ResultsStore, tenants: tuple[str, str], tmp_path: Path
) -> None:
    acme, _ = tenants
    known = KnownRun(store)
    known.scans(acme, 10, start_us=DAY0_US, group="TRAY-1")
    # A tenant whose name cannot be a folder stops the run after acme's files are written.
    bad = "zz/" + acme
    store.record_dead_letter(
        DeadLetterRow("x", bad, "classify", "E", "m", 1, "scans.raw", 0, 0, DAY0_US)
    )
    folder = tmp_path / "export"
    with pytest.raises(ExportError, match="cannot name a folder"):
        export(store, folder, settle_s=0, now=DAY0_US + HOUR_US)
    state = json.loads((folder / STATE_FILE).read_text())
    assert state["pending_us"] == DAY0_US + HOUR_US
    assert len(ids_exported(folder)) == 10  # written, but not yet counted as done
    # The next run (told to leave the bad tenant out) finishes the same range.
    done = export(store, folder, tenants=[acme], settle_s=0, now=DAY0_US + 5 * HOUR_US)
    assert done.resumed and done.horizon_us == DAY0_US + HOUR_US
    ids = ids_exported(folder)
    assert sorted(ids) == sorted(f"{acme}-scan-{i}" for i in range(1, 11))
    assert json.loads((folder / STATE_FILE).read_text())["pending_us"] is None


def test_the_cli_exports_and_queries_as_table_csv_and_json(
    store: ResultsStore,
    store_url: str,
    tenants: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    acme, globex = tenants
    known = KnownRun(store)
    known.scans(acme, 6, start_us=DAY0_US, group="TRAY-1")
    known.scans(globex, 2, start_us=DAY0_US, group="TRAY-2")
    folder = tmp_path / "export"
    pipeline = str(APP.pipeline_path())
    command = ["analytics", "export", pipeline, "--store", store_url, "--to", str(folder)]
    assert main([*command, "--settle", "0"]) == 0
    assert "exported 8 records" in capsys.readouterr().out
    sql = "SELECT tenant, count(*) AS n FROM records GROUP BY tenant ORDER BY tenant"
    assert main(["analytics", "query", str(folder), sql, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"tenant": acme, "n": 6}, {"tenant": globex, "n": 2}
    ]  # fmt: skip
    assert main(["analytics", "query", str(folder), sql, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["tenant,n", f"{acme},6", f"{globex},2"]
    assert main(["analytics", "query", str(folder), sql]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["tenant", "n"] and table[-1] == "(2 rows)"
    assert main(["analytics", "query", str(folder), "SELECT nope FROM records"]) == 2
    assert "nope" in capsys.readouterr().err
