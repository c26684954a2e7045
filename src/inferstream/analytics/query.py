"""DuckDB over an export: the views ``records``, ``predictions``, ``feedback``,
``feedback_history`` and ``dead_letters``, for every tenant or confined to one.

:func:`open_tenant` is the confinement the API's saved queries run in: the views read
only ``DIR/tenant=T/``, then DuckDB is told to allow no other file
(``allowed_directories`` with ``enable_external_access = false``) and the
configuration is locked, so SQL cannot name another tenant's files or change the
setting back; :func:`check_select` admits one ``SELECT`` only, since a ``COPY``
could still write inside the allowed directory.

An export on S3 (``s3://bucket/prefix``) is read through pyarrow's S3 file system
(:mod:`inferstream.analytics.places`): each view is a pyarrow dataset of the files
found, scanned by DuckDB. DuckDB's own S3 reader (the ``httpfs`` extension) is not in
its wheel and would be downloaded at run time, which a deployment must not need.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferstream.analytics.export import TABLES, ExportTable, arrow_schema
from inferstream.analytics.places import S3Place, open_place, pyarrow_module
from inferstream.errors import InferstreamError, MissingExtraError

#: Partition keys DuckDB reads from the path, with their types (a tenant named "123"
#: stays text).
_HIVE_TYPES = "{'tenant': 'VARCHAR', 'app': 'VARCHAR', 'date': 'DATE'}"
_HIVE_TYPES_NO_APP = "{'tenant': 'VARCHAR', 'date': 'DATE'}"
#: The latest ground truth per subject and head (a correction is exported again).
_LATEST_FEEDBACK = (
    "SELECT * FROM feedback_history QUALIFY row_number() OVER "
    "(PARTITION BY tenant, app, subject, head ORDER BY at_us DESC) = 1"
)


#: What one confined query may take: DuckDB's memory and threads, and the wall clock
#: (:func:`run`'s ``timeout_s``, which the API's saved queries use). One tenant's query
#: must not take the API process's memory or cores from the others.
TENANT_MEMORY_LIMIT = "512MB"
TENANT_THREADS = 1
TENANT_TIMEOUT_S = 30.0


class AnalyticsQueryError(InferstreamError):
    """A query DuckDB refused, or one that is not a single SELECT."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def duckdb_module() -> Any:
    try:
        import duckdb
    except ImportError as exc:
        raise MissingExtraError("duckdb", "analytics") from exc
    return duckdb


def open_export(folder: Path | str) -> Any:
    """An in-memory DuckDB connection with views over every tenant's files, of a local
    folder or of ``s3://bucket/prefix``."""
    place = open_place(folder)
    if isinstance(place, S3Place):
        return _connect_s3(place)
    return _connect(Path(folder), "tenant=*")


def open_tenant(folder: Path, tenant: str, *, memory_limit: str = TENANT_MEMORY_LIMIT) -> Any:
    """A connection whose views and SQL reach only ``tenant``'s files (see above), with
    at most ``memory_limit`` of memory and :data:`TENANT_THREADS` threads."""
    root = folder.resolve() / f"tenant={tenant}"
    conn = _connect(folder.resolve(), f"tenant={tenant}")
    conn.execute("SET allowed_directories = $1", [[f"{root}/"]])
    conn.execute("SET enable_external_access = false")
    conn.execute("SET memory_limit = $1", [memory_limit])
    conn.execute(f"SET threads = {TENANT_THREADS}")
    conn.execute("SET lock_configuration = true")
    return conn


def _connect(folder: Path, tenants: str) -> Any:
    duckdb = duckdb_module()
    conn = duckdb.connect(":memory:")
    for spec in TABLES:
        name = "feedback_history" if spec.name == "feedback" else spec.name
        parts = "app=*/date=*" if spec.by_app else "date=*"
        pattern = f"{tenants}/{spec.name}/{parts}/*.parquet"
        if any(folder.glob(pattern)):
            types = _HIVE_TYPES if spec.by_app else _HIVE_TYPES_NO_APP
            source = (
                f"read_parquet('{_quoted(folder / pattern)}', hive_partitioning = true, "
                f"hive_types = {types}, union_by_name = true)"
            )
        else:
            source = _empty(conn, spec)
        conn.execute(f"CREATE VIEW {name} AS SELECT * FROM {source}")
    conn.execute(f"CREATE VIEW feedback AS {_LATEST_FEEDBACK}")
    return conn


def _connect_s3(place: S3Place) -> Any:
    """Views over an export on S3: one pyarrow dataset a table, of the files listed now."""
    duckdb, ds = duckdb_module(), importlib.import_module("pyarrow.dataset")
    place.check_export()
    files = [p.split("/") for p in place.files("") if p.endswith(".parquet")]
    conn = duckdb.connect(":memory:")
    for spec in TABLES:
        name = "feedback_history" if spec.name == "feedback" else spec.name
        mine = [
            place.dataset_path("/".join(parts))
            for parts in files
            if parts[0].startswith("tenant=") and parts[1:2] == [spec.name]
        ]
        if mine:
            schema = _with_partitions(arrow_schema(spec), spec)
            partitions = ds.partitioning(
                _with_partitions(pyarrow_module().schema([]), spec), flavor="hive"
            )
            dataset = ds.dataset(
                mine, schema=schema, format="parquet", filesystem=place.fs,
                partitioning=partitions, partition_base_dir=place.dataset_path(""),
            )  # fmt: skip
            conn.register(f"_files_{spec.name}", dataset)
            source = f"_files_{spec.name}"
        else:
            source = _empty(conn, spec)
        conn.execute(f"CREATE VIEW {name} AS SELECT * FROM {source}")
    conn.execute(f"CREATE VIEW feedback AS {_LATEST_FEEDBACK}")
    return conn


def _with_partitions(schema: Any, spec: ExportTable) -> Any:
    """``schema`` with the partition keys the layout's folder names carry."""
    pa = pyarrow_module()
    for name, kind in (("tenant", pa.string()), ("app", pa.string()), ("date", pa.date32())):
        if name != "app" or spec.by_app:
            schema = schema.append(pa.field(name, kind))
    return schema


def _empty(conn: Any, spec: ExportTable) -> str:
    """A relation with the table's columns and no rows (a tenant with none exported)."""
    conn.register(f"_empty_{spec.name}", _with_partitions(arrow_schema(spec), spec).empty_table())
    return f"_empty_{spec.name}"


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def check_select(sql: str) -> None:
    """Refuse anything but exactly one SELECT (no COPY, ATTACH, SET, PRAGMA, ...)."""
    duckdb = duckdb_module()
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise AnalyticsQueryError(f"the query does not parse: {exc}") from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise AnalyticsQueryError(
            "a query must be exactly one SELECT statement (WITH ... SELECT is fine)"
        )


def run(
    conn: Any, sql: str, *, max_rows: int | None = None, timeout_s: float | None = None
) -> QueryResult:
    """Run ``sql``, stopped after ``timeout_s`` if given; DuckDB's refusals (and a query
    stopped) become :class:`AnalyticsQueryError`."""
    duckdb = duckdb_module()
    timer = None if timeout_s is None else threading.Timer(timeout_s, conn.interrupt)
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(max_rows) if max_rows is not None else cursor.fetchall()
        return QueryResult([column[0] for column in cursor.description or ()], rows)
    except duckdb.InterruptException as exc:
        raise AnalyticsQueryError(
            f"the query ran longer than {timeout_s:g} s and was stopped; narrow it (a date "
            "range, fewer columns) or run it on an export with 'inferstream analytics query'"
        ) from exc
    except duckdb.OutOfMemoryException as exc:
        raise AnalyticsQueryError(
            f"the query needs more memory than a saved query may take: {exc}; narrow it, or "
            "run it on an export with 'inferstream analytics query'"
        ) from exc
    except duckdb.Error as exc:
        raise AnalyticsQueryError(f"DuckDB refused the query: {exc}") from exc
    finally:
        if timer is not None:
            timer.cancel()
