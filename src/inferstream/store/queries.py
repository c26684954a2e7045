"""SQL statements the store runs, built with SQLAlchemy Core, plus cursor encoding.

Pure functions of their arguments (no connection), so :mod:`inferstream.store.store`
stays about transactions and the statements can be read in one place. The batch
upsert is also compiled once per dialect (:func:`driver_upsert`) for the hot write path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Dialect,
    Insert,
    Select,
    Table,
    and_,
    case,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy import tuple_ as sql_tuple
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.compiler import SQLCompiler

from inferstream.errors import InferstreamError
from inferstream.store.attributes import attribute_matches
from inferstream.store.rows import OnConflict, Order, ResultFilter
from inferstream.store.schema import feedback, predictions, records

#: Largest page a listing returns, whatever the caller asks for.
MAX_PAGE = 1000

#: Columns a redelivery with ``on_conflict="update"`` leaves alone: the key, and
#: stored_at_us so a row keeps its place in cursor pagination.
_KEEP_ON_UPDATE = frozenset({"tenant", "id", "stored_at_us", "latency_ms"})


class InvalidQuery(InferstreamError):
    """A query's arguments are unusable (bad cursor, bad limit); fix the request."""


def upsert(table: Table, dialect: str, on_conflict: OnConflict) -> Insert:
    """An insert that skips (or updates) rows whose primary key is already stored."""
    stmt = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    keys = [column.name for column in table.primary_key.columns]
    if on_conflict == "ignore":
        return stmt.on_conflict_do_nothing(index_elements=keys)
    updates = {
        column.name: stmt.excluded[column.name]
        for column in table.columns
        if column.name not in keys and column.name not in _KEEP_ON_UPDATE
    }
    return stmt.on_conflict_do_update(index_elements=keys, set_=updates)


@dataclass(frozen=True, slots=True)
class DriverUpsert:
    """:func:`upsert` compiled once for one dialect: the SQL its driver runs, and the
    dialect's own conversions of the parameters (a JSON column's serialisation, a
    float's coercion), so the values stored are those ``Connection.execute`` stores.

    The store's batch writes run it with ``Connection.exec_driver_sql``: at the few
    records a batch holds under moderate load, SQLAlchemy's per-execute work on a
    statement (cache key, parameter construction) cost more than the driver's
    executemany (measured on batches of 4 records: 0.71 ms of CPU on SQLite that way,
    0.49 ms this way; 1.7 against 1.1 ms on PostgreSQL; "update" batches 2 to 3 times
    cheaper on both).
    """

    sql: str
    conversions: tuple[tuple[str, Callable[[Any], Any]], ...]
    #: For a positional paramstyle (SQLite's ``?``), the values in the SQL's order.
    in_order: Callable[[dict[str, Any]], tuple[Any, ...]] | None

    def params(self, rows: Iterable[Mapping[str, Any]]) -> list[Any]:
        """Driver parameters of ``rows`` (each a value for every column, by name)."""
        return [self._bind(row) for row in rows]

    def _bind(self, row: Mapping[str, Any]) -> Any:
        values = dict(row)
        for name, convert in self.conversions:
            values[name] = convert(values[name])
        return values if self.in_order is None else self.in_order(values)


@lru_cache(maxsize=64)
def driver_upsert(table: Table, dialect: Dialect, on_conflict: OnConflict) -> DriverUpsert:
    """:func:`upsert` of every column of ``table``, compiled for ``dialect``."""
    compiled = upsert(table, dialect.name, on_conflict).compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    conversions = []
    for column in table.columns:
        convert = column.type.dialect_impl(dialect).bind_processor(dialect)
        if convert is not None:
            conversions.append((column.name, convert))
    in_order = itemgetter(*compiled.positiontup) if compiled.positiontup else None
    return DriverUpsert(compiled.string, tuple(conversions), in_order)


def result_conditions(
    tenant: str, filters: ResultFilter | None, rows: ColumnElement[bool] | None = None
) -> list[ColumnElement[bool]]:
    """WHERE terms for a tenant's results under ``filters``; ``rows`` replaces the
    tenant's own rows with another set (those sharing grants let it read too)."""
    c = records.c
    conditions: list[ColumnElement[bool]] = [c.tenant == tenant if rows is None else rows]
    if filters is None:
        return conditions
    columns = {"subject": c.subject, "group": c.group_key, "source": c.source,
               "root_id": c.root_id, "app": c.app, "label": c.label,
               "model_name": c.model_name, "model_version": c.model_version}  # fmt: skip
    for name, column in columns.items():
        value = getattr(filters, name)
        if value is not None:
            conditions.append(column == value)
    bounds = (
        (filters.min_confidence, c.confidence.__ge__),
        (filters.max_confidence, c.confidence.__le__),
        (filters.since_us, c.created_at_us.__ge__),
        (filters.until_us, c.created_at_us.__lt__),
    )
    conditions.extend(compare(bound) for bound, compare in bounds if bound is not None)
    conditions.extend(attribute_matches(name, value) for name, value in filters.attributes.items())
    return conditions


#: The order of record listings: store time, then id.
RECORD_ORDER = ("stored_at_us", "id")


def keyset_page(
    table: Table,
    conditions: Sequence[ColumnElement[bool]],
    order_columns: tuple[str, str],
    *,
    cursor: str | None,
    limit: int,
    order: Order,
    sort_apart: bool = False,
) -> Select[Any]:
    """SELECT one page after ``cursor`` ordered by ``order_columns`` (time, then id).

    Keyset rather than OFFSET: a page is found through the index whatever its depth,
    and rows inserted meanwhile never shift the pages already read.

    ``sort_apart``: order by the columns' values as expressions (``+ 0``, ``|| ''``: the
    same order), which no index provides, so SQLite finds the rows through the index
    that serves the conditions best and sorts them. For a small event-time window
    (:func:`window_size`) that is far cheaper than its usual plan, walking the index of
    the page's order and testing every row it passes: every row of the tenant, when the
    window holds nothing near that end.
    """
    check_limit(limit)
    first, second = (table.c[name] for name in order_columns)
    if sort_apart:
        first, second = first + 0, second.concat("")  # type: ignore[assignment]
    where = list(conditions)
    if cursor is not None:
        after = sql_tuple(first, second)
        position = decode_cursor(cursor)
        where.append(after > position if order == "asc" else after < position)
    ordering = (first, second) if order == "asc" else (first.desc(), second.desc())
    # One extra row tells whether another page follows.
    return select(table).where(and_(*where)).order_by(*ordering).limit(limit + 1)


def merged_pages(
    pages: Sequence[Select[Any]], order_columns: tuple[str, str], *, limit: int, order: Order
) -> Select[Any]:
    """One page out of ``pages`` (each a :func:`keyset_page` of one part of the rows, in
    the same order and after the same cursor): their rows together, in that order, cut
    to the page and its one extra row. A single page is returned as it is."""
    if len(pages) == 1:
        return pages[0]
    # Columns by name (``*``, then the first page's names and types): SQLAlchemy's
    # proxies of every column at every level cost more than the query (1.2 ms a call).
    every: ColumnClause[Any] = literal_column("*")
    merged = union_all(*(select(every).select_from(page.subquery()) for page in pages))
    columns = [literal_column(c.name, c.type) for c in pages[0].selected_columns]
    named = {c.name: c for c in columns}
    first, second = (named[name] for name in order_columns)
    ordering = (first, second) if order == "asc" else (first.desc(), second.desc())
    together = select(*columns).select_from(merged.subquery("pages"))
    return together.order_by(*ordering).limit(limit + 1)


#: The most records an event-time window may hold to be read through its own index and
#: sorted (:func:`window_size`); a larger one is read in the page's order as before.
#: Counting up to it walks that many index entries (~0.1 ms on SQLite here); sorting
#: that many rows costs a few ms at most.
WINDOW_SORT_MAX = 500


def window_size(tenant: str, filters: ResultFilter | None) -> tuple[str, tuple[Any, ...]] | None:
    """SQLite's SQL counting a tenant's records in the event-time window of ``filters``
    (``since_us``/``until_us``) no further than :data:`WINDOW_SORT_MAX`, through the
    ``(tenant, created_at_us)`` index, with its parameters; None without a window.

    Run as the driver's SQL: through SQLAlchemy's statement machinery the count cost
    four times the walk itself (0.17 ms of CPU against 0.04).
    """
    if filters is None or (filters.since_us is None and filters.until_us is None):
        return None
    terms: list[str] = ["tenant = ?"]
    params: list[Any] = [tenant]
    if filters.since_us is not None:
        terms.append("created_at_us >= ?")
        params.append(filters.since_us)
    if filters.until_us is not None:
        terms.append("created_at_us < ?")
        params.append(filters.until_us)
    where = " AND ".join(terms)
    sql = f"SELECT count(*) FROM (SELECT 1 FROM records WHERE {where} LIMIT {WINDOW_SORT_MAX})"
    return sql, tuple(params)


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidQuery(f"limit {limit} is out of range; ask for 1 to {MAX_PAGE} rows")


#: A cursor is a position: the last row's store time and its id (hex of its UTF-8).
#: Any string of this shape is a valid position, in either order.
CURSOR_PATTERN = r"^[0-9]{1,18}\.(?:[0-9a-f]{2}){1,256}$"
_CURSOR_RE = re.compile(CURSOR_PATTERN)


def encode_cursor(at_us: int, ident: str) -> str:
    return f"{at_us}.{ident.encode().hex()}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (time, id) position in ``cursor``; :class:`InvalidQuery` when it has not its shape."""
    if not _CURSOR_RE.fullmatch(cursor):
        raise InvalidQuery(
            "cursor is not one this store issues (<time>.<hex id>); pass next_cursor "
            "from the previous page"
        )
    at_us, ident = cursor.split(".")
    return int(at_us), bytes.fromhex(ident).decode("utf-8", errors="replace")


def summary_by_label(tenant: str, group: str) -> Select[Any]:
    """Per-label count, confidence sum and first/last store time of one group."""
    c = records.c
    return (
        select(
            c.label,
            func.count().label("count"),
            func.sum(c.confidence).label("confidence_sum"),
            func.min(c.stored_at_us).label("first"),
            func.max(c.stored_at_us).label("last"),
        )
        .where(c.tenant == tenant, c.group_key == group)
        .group_by(c.label)
    )


def accuracy(tenant: str, app: str | None = None) -> Select[Any]:
    """Labelled and correct counts per model version and role, against feedback.

    A prediction is labelled when feedback names its record's subject and its head.
    """
    p, r, f = predictions.c, records.c, feedback.c
    correct = func.sum(case((p.label == f.label, 1), else_=0))
    return (
        select(
            p.model_name,
            p.model_version,
            p.role,
            func.count().label("labelled"),
            correct.label("correct"),
        )
        .join(records, and_(r.tenant == p.tenant, r.id == p.record_id))
        .join(
            feedback,
            and_(f.tenant == r.tenant, f.app == r.app, f.subject == r.subject, f.head == p.head),
        )
        .where(p.tenant == tenant, *([r.app == app] if app is not None else []))
        .group_by(p.model_name, p.model_version, p.role)
        .order_by(p.role, p.model_name, p.model_version)
    )
