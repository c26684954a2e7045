"""Planner statistics: after ``refresh_statistics`` SQLite finds one group through its index."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from inferstream.store import ResultRow, ResultsStore

RowFactory = Callable[..., ResultRow]


def _group_plan(store: ResultsStore) -> str:
    query = (
        "EXPLAIN QUERY PLAN SELECT * FROM records WHERE tenant = 'acme' "
        "AND group_key = 'TRAY-0007' "
        "ORDER BY stored_at_us, id LIMIT 51"
    )
    with store.engine.connect() as conn:
        return " ".join(str(row[-1]) for row in conn.execute(text(query)))


def test_a_group_page_uses_the_group_index_with_or_without_statistics(
    tmp_path: Path, make_row: RowFactory
) -> None:
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    rows = [
        make_row("acme", f"s{i}", stored_at_us=1_000_000 + i, group=f"TRAY-{i // 36:04d}")
        for i in range(3600)
    ]
    store.upsert_results(rows)
    # The group's index also orders the page (it ends with stored_at_us, id), so SQLite
    # takes it with or without statistics; before migration 0005 it walked the time
    # index through every record of the tenant until statistics were taken.
    assert "group_key=?" in _group_plan(store)
    store.refresh_statistics()
    assert "group_key=?" in _group_plan(store)
    assert len(store.list_results("acme").items) == 100  # the store still answers
    store.close()


def test_refresh_statistics_on_postgresql_leaves_it_to_autovacuum(store: ResultsStore) -> None:
    store.refresh_statistics()  # a no-op on PostgreSQL, ANALYZE on SQLite: neither fails
    assert store.count_results("nobody") == 0
