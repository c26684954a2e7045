"""Result upserts and queries: idempotence, tenant isolation, filters, cursors, summaries."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Text, cast, func, select

from inferstream.store import DeadLetterRow, InvalidQuery, ResultFilter, ResultRow, ResultsStore
from inferstream.store.queries import result_conditions
from inferstream.store.schema import dead_letters, predictions, records

RowFactory = Callable[..., ResultRow]


def test_same_batch_twice_stores_one_row_per_id(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    batch = [make_row(acme, f"scan-{i}", stored_at_us=1_000_000 + i) for i in range(64)]
    store.upsert_results(batch)
    store.upsert_results(batch)
    store.upsert_results([*batch[:10], make_row(acme, "scan-new")])
    assert store.count_results(acme) == 65
    assert store.get_result(acme, "scan-3") == batch[3]


def test_update_mode_replaces_the_prediction_but_keeps_the_position(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    store.upsert_results([make_row(acme, "s1", stored_at_us=5)])
    store.upsert_results([make_row(acme, "s1", stored_at_us=9, label="male")])
    first = store.get_result(acme, "s1")
    assert first is not None and first.label == "female"
    store.upsert_results(
        [make_row(acme, "s1", stored_at_us=9, label="male", model_version="2.0.0")],
        on_conflict="update",
    )
    updated = store.get_result(acme, "s1")
    assert updated is not None
    assert (updated.label, updated.model_version, updated.stored_at_us) == ("male", "2.0.0", 5)


def test_every_query_is_scoped_to_its_tenant(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    store.upsert_results([make_row(acme, "shared", label="female"), make_row(acme, "a2")])
    store.upsert_results([make_row(globex, "shared", label="male")])
    mine = store.get_result(acme, "shared")
    theirs = store.get_result(globex, "shared")
    assert mine is not None and theirs is not None
    assert (mine.label, theirs.label) == ("female", "male")
    assert store.get_result(globex, "a2") is None
    assert store.count_results(acme) == 2 and store.count_results(globex) == 1
    assert {r.tenant for r in store.list_results(globex).items} == {globex}
    assert store.group_summary(globex, "TRAY-0001").counts == {"male": 1}
    assert store.count_results("nobody") == 0


def test_filters_select_matching_rows(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    store.upsert_results(
        [
            make_row(acme, "a", stored_at_us=10_000_000, confidence=0.95, group="T1"),
            make_row(acme, "b", stored_at_us=20_000_000, confidence=0.55, label="male"),
            make_row(acme, "c", stored_at_us=30_000_000, source="SCANNER-09", group="T1"),
            make_row(acme, "d", stored_at_us=40_000_000, model_version="2.0.0"),
        ]
    )

    def ids(**criteria: object) -> list[str]:
        page = store.list_results(acme, ResultFilter(**criteria))  # type: ignore[arg-type]
        return [row.id for row in page.items]

    assert ids(group="T1") == ["a", "c"]
    assert ids(source="SCANNER-09") == ["c"]
    assert ids(label="male") == ["b"]
    assert ids(min_confidence=0.9) == ["a", "c", "d"]
    assert ids(max_confidence=0.6) == ["b"]
    assert ids(model_version="2.0.0") == ["d"]
    assert ids(subject="EGG-b") == ["b"]
    # created_at_us is stored_at_us - 50 ms in make_row; the range is half-open.
    assert ids(since_us=19_950_000, until_us=39_950_000) == ["b", "c"]
    assert ids(group="T1", min_confidence=0.92) == ["a"]
    assert store.count_results(acme, ResultFilter(group="T1")) == 2


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_cursor_pages_have_no_duplicates_or_gaps_while_rows_arrive(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str], order: str
) -> None:
    acme, _ = tenants
    # Equal timestamps in pairs, so the id tie-break is exercised.
    initial = [make_row(acme, f"r{i:03d}", stored_at_us=1_000 + i // 2) for i in range(40)]
    store.upsert_results(initial)
    seen: list[str] = []
    cursor: str | None = None
    added = 0
    while True:
        page = store.list_results(acme, cursor=cursor, limit=7, order=order)  # type: ignore[arg-type]
        seen.extend(row.id for row in page.items)
        # Later arrivals, and one that lands among rows already read.
        late = [
            make_row(acme, f"z{added + k:03d}", stored_at_us=5_000 + added + k) for k in range(3)
        ]
        store.upsert_results([*late, make_row(acme, f"mid{added}", stored_at_us=1_005)])
        added += 3
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen))
    assert {row.id for row in initial} <= set(seen)
    if order == "asc":
        assert [s for s in seen if s.startswith("z")] == sorted(
            s for s in seen if s.startswith("z")
        )
        assert len([s for s in seen if s.startswith("z")]) > 0


def test_bad_cursor_and_limit_are_invalid_queries(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    store.upsert_results([make_row(acme, f"r{i}", stored_at_us=i) for i in range(3)])
    page = store.list_results(acme, limit=2)
    assert page.next_cursor is not None and len(page.items) == 2
    # A cursor is a position: read backwards from it, it gives the rows before it.
    before = store.list_results(acme, cursor=page.next_cursor, order="desc")
    assert [row.id for row in before.items] == ["r0"]
    # Any cursor of the documented shape is a position, even one never issued.
    assert store.list_results(acme, cursor="1." + "ff" * 3).items[0].id == "r2"
    with pytest.raises(InvalidQuery, match="cursor"):
        store.list_results(acme, cursor="not-a-cursor!")
    with pytest.raises(InvalidQuery, match="limit"):
        store.list_results(acme, limit=0)


def test_group_summary_figures(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    second = 1_000_000
    rows = [
        make_row(acme, "f1", stored_at_us=10 * second, label="female", confidence=0.9),
        make_row(acme, "f2", stored_at_us=11 * second, label="female", confidence=0.8),
        make_row(acme, "f3", stored_at_us=12 * second, label="female", confidence=0.7),
        make_row(acme, "m1", stored_at_us=12 * second, label="male", confidence=0.6),
        make_row(acme, "n1", stored_at_us=14 * second, label="not_developing", confidence=0.5),
        make_row(acme, "other", stored_at_us=99 * second, group="TRAY-0002"),
    ]
    store.upsert_results(rows)
    summary = store.group_summary(acme, "TRAY-0001", ratio_label="female")
    assert summary.count == 5
    assert summary.counts == {"female": 3, "male": 1, "not_developing": 1}
    assert summary.ratio == pytest.approx(0.6)
    assert summary.mean_confidence == pytest.approx(0.7)
    assert (summary.first_stored_at_us, summary.last_stored_at_us) == (10 * second, 14 * second)
    assert summary.throughput_per_s == pytest.approx(5 / 4)
    empty = store.group_summary(acme, "TRAY-9999")
    assert (empty.count, empty.counts, empty.throughput_per_s) == (0, {}, None)


def test_rows_round_trip_with_json_fields(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    row: ResultRow = make_row(
        acme,
        "json",
        lineage=(
            {"stage": "decode", "at_us": 1, "worker": "a"},
            {"stage": "classify", "at_us": 2, "worker": "b"},
        ),
    )
    store.upsert_results([row])
    assert store.get_result(acme, "json") == row


def test_records_filter_on_typed_declared_attributes(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    store.upsert_results(
        [
            make_row(acme, "c0", attributes={"crop": 0, "field": "F1", "ratio": 0.5}),
            make_row(acme, "c1", attributes={"crop": 1, "field": "F1", "ratio": 0.25}),
            make_row(acme, "c2", attributes={"crop": 1, "field": "F2", "ratio": 0.25}),
            make_row(globex, "g1", attributes={"crop": 1, "field": "F1"}),
        ]
    )

    def ids(**attributes: str | int | float) -> list[str]:
        page = store.list_results(acme, ResultFilter(attributes=attributes))
        return [row.id for row in page.items]

    assert ids(crop=1) == ["c1", "c2"]
    assert ids(crop=1, field="F1") == ["c1"]
    assert ids(ratio=0.25) == ["c1", "c2"]
    assert ids(field="F3") == []
    assert store.count_results(globex, ResultFilter(attributes={"crop": 1})) == 1


def test_a_registered_applications_attribute_filters_use_their_index(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    from fanout_app import APP as LEAVES

    acme, _ = tenants
    rows = [make_row(acme, f"r{i}", attributes={"height": i % 40}) for i in range(400)]
    store.upsert_results(rows)
    store.register_app(LEAVES)
    store.register_app(LEAVES)  # again: a no-op
    store.refresh_statistics()
    filters = ResultFilter(attributes={"height": 7})
    assert store.count_results(acme, filters) == 10
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # few rows: force a choice
        stmt = select(func.count()).select_from(records).where(*result_conditions(acme, filters))
        compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
        explain = "EXPLAIN" if conn.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"{explain} {compiled}"))
    assert "ix_records_attr_height" in plan, (plan, str(compiled))


def test_json_columns_read_back_as_written_and_as_updated(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    nested = {"stage": "crop", "at_us": 7, "worker": "w", "boxes": [[1, 2.5], ["ä", None, []]]}
    row: ResultRow = make_row(
        acme,
        "json-values",
        scores={"fêmale": 0.1 + 0.2, "male": 1e-7, "日本": 1 / 3},
        attributes={"note": 'Ærø 🥚 "quoted" \\ tab\t', "crop": 2**53, "ratio": -2.5e-300},
        lineage=({"stage": "decode", "at_us": 1, "worker": "a"}, nested),
    )
    store.upsert_results([row])
    assert store.get_result(acme, row.id) == row
    assert store.list_predictions(acme, row.id) == [row.champion()]
    with store.engine.connect() as conn:
        stored = select(*(cast(records.c[name], Text) for name in ("attributes", "scores")))
        text = conn.execute(stored.where(records.c.id == row.id)).one()
    # The text SQLAlchemy's JSON type writes: json.dumps with its defaults.
    assert tuple(text) == (json.dumps(row.attributes), json.dumps(row.scores))

    changed: ResultRow = make_row(
        acme,
        "json-values",
        stored_at_us=row.stored_at_us + 1,
        label="male",
        scores={"male": 0.75, "ñ": [0.125, {"deep": ["x"]}]},
        attributes={"note": "ünïcode", "ratio": 0.5},
        lineage=(nested,),
    )
    store.upsert_results([changed], on_conflict="update")
    # The key and the position in time (stored_at_us, latency_ms) stay; the rest is replaced.
    kept = {"stored_at_us": row.stored_at_us, "latency_ms": row.latency_ms}
    assert store.get_result(acme, row.id) == dataclasses.replace(changed, **kept)
    [prediction] = store.list_predictions(acme, row.id)
    assert prediction == dataclasses.replace(changed.champion(), stored_at_us=row.stored_at_us)


def test_a_redelivered_batch_writes_nothing(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants

    def batch(label: str) -> dict[str, Any]:
        rows = [make_row(acme, "a1", label=label), make_row(globex, "g1"), make_row(acme, "a2")]
        shadow = dataclasses.replace(rows[0].champion(), role="shadow", model_version="2.0.0")
        letters = [
            DeadLetterRow("d1", tenant, "decode", "InvalidInput", label, 1, "scans.raw", 0, 1, 1)
            for tenant in tenants
        ]
        champions = [row.champion() for row in rows]
        return {"results": rows, "predictions": [*champions, shadow], "dead_letters": letters}

    store.write_batch(**batch("female"))
    stored = _every_row(store)
    assert [len(rows) for rows in stored] == [3, 4, 2]
    store.write_batch(**batch("female"))
    store.write_batch(**batch("male"))  # the same keys: ignored, not updated
    assert _every_row(store) == stored


def _every_row(store: ResultsStore) -> list[list[Any]]:
    """Every row of the tables a batch writes, in primary-key order."""
    with store.engine.connect() as conn:
        return [
            list(conn.execute(select(table).order_by(*table.primary_key.columns)))
            for table in (records, predictions, dead_letters)
        ]


# -- event-time windows ---------------------------------------------------------------------


def _window_rows(make_row: RowFactory, tenant: str) -> list[ResultRow]:
    """120 records stored a second apart; event times run 50 ms before, and every third
    arrived late (created ten minutes before the others), so the two orders differ."""
    rows = []
    for i in range(120):
        stored = 1_000_000_000 + i * 1_000_000
        created = stored - 50_000 - (600_000_000 if i % 3 == 0 else 0)
        source = f"SCANNER-0{i % 2 + 1}"
        rows.append(make_row(tenant, f"w-{i:03d}", stored_at_us=stored, created_at_us=created,
                             source=source))  # fmt: skip
    return rows


def _every_page(store: ResultsStore, tenant: str, filters: ResultFilter, order: Any) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_results(tenant, filters, cursor=cursor, limit=7, order=order)
        seen += [row.id for row in page.items]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


#: (order, WINDOW_SORT_MAX): every window sorted apart on SQLite, or only the smallest.
WINDOW_CASES = [("asc", 500), ("desc", 500), ("asc", 10), ("desc", 10)]


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_an_event_time_window_lists_its_records_in_store_order_page_by_page(
    store: ResultsStore,
    make_row: RowFactory,
    tenants: tuple[str, str],
    case: tuple[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Small windows (sorted apart on SQLite) and larger ones (read in the page's order)
    give the same pages: every record of the window, in store order, none twice."""
    order, sort_max = case
    acme, globex = tenants
    rows = _window_rows(make_row, acme)
    store.upsert_results(rows)
    store.upsert_results(_window_rows(make_row, globex)[:30])
    monkeypatch.setattr("inferstream.store.queries.WINDOW_SORT_MAX", sort_max)
    start = 1_000_000_000
    windows = [
        ResultFilter(since_us=start + 200_000_000),  # after the last record: empty
        ResultFilter(since_us=start + 30_000_000, until_us=start + 52_000_000),
        ResultFilter(until_us=start - 100_000_000),  # the late ones only
        ResultFilter(since_us=start + 10_000_000, source="SCANNER-02"),
        ResultFilter(since_us=start),
    ]
    for window in windows:
        expected = sorted(
            (r for r in rows if _in_window(r, window)),
            key=lambda r: (r.stored_at_us, r.id),
            reverse=order == "desc",
        )
        assert _every_page(store, acme, window, order) == [r.id for r in expected], window


def _in_window(row: ResultRow, window: ResultFilter) -> bool:
    return (
        (window.since_us is None or row.created_at_us >= window.since_us)
        and (window.until_us is None or row.created_at_us < window.until_us)
        and (window.source is None or row.source == window.source)
    )


def test_a_small_window_is_found_through_the_event_time_index_on_sqlite(
    tmp_path: Any, make_row: RowFactory
) -> None:
    """The plan, asked of SQLite itself: a window that holds few records is read through
    (tenant, created_at_us) and sorted, not by walking every record in store order and
    testing it; a larger one is listed in the page's order."""
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.upsert_results(_window_rows(make_row, "acme"))
    listed: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT records.tenant"):
            listed.append((statement, params))

    from sqlalchemy import event

    event.listen(store.engine, "before_cursor_execute", keep)
    empty = ResultFilter(since_us=1_000_000_000 + 200_000_000)
    dense = ResultFilter(since_us=0)  # every record: more than a sort is worth at 10
    try:
        assert store.list_results("acme", empty, order="desc").items == []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("inferstream.store.queries.WINDOW_SORT_MAX", 10)
            assert len(store.list_results("acme", dense, limit=5, order="desc").items) == 5
        with store.engine.connect() as conn:
            explained = [conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)
                         for sql, params in listed]  # fmt: skip
            plans = [" ".join(row[3] for row in steps) for steps in explained]
    finally:
        store.close()
    assert len(plans) == 2
    assert "ix_records_tenant_created_at_us" in plans[0] and "TEMP B-TREE" in plans[0]
    # A window beyond the limit keeps the page's own order (SQLite plans it as it likes).
    assert ["||" in sql for sql, _ in listed] == [True, False]
