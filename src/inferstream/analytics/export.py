"""Incremental export of the results store to Parquet, one folder per tenant.

The export goes to a local folder or to ``s3://bucket/prefix``
(:mod:`inferstream.analytics.places`); the layout is the same (Hive partitioning,
dates in UTC)::

    DIR/export-state.json
    DIR/tenant=T/records/app=A/date=YYYY-MM-DD/part-<from>-<through>-<n>.parquet
    DIR/tenant=T/predictions/app=A/date=.../...
    DIR/tenant=T/feedback/app=A/date=.../...
    DIR/tenant=T/dead_letters/date=.../...      (dead letters name no application)

The tenant is the top folder so one tenant's data is one directory: the API's saved
queries are confined to it (:mod:`inferstream.analytics.query`).

Each run exports the rows whose time (``stored_at_us``; ``at_us`` for feedback and
dead letters) lies in ``(through, horizon]`` per tenant and table, then records
``horizon`` as the new ``through``. Why a time horizon and not "everything so far":
rows are stamped before their transaction commits, so with several writers a row
stamped ``t`` may become visible after one stamped ``t + 1``; a watermark at the
newest visible time would skip it for ever. The horizon is ``now - settle``
(five minutes by default), so a row is exported once no row stamped before it can
still be in flight. The store has no commit sequence to key on instead, and a
lookback with dedupe would have to read back the files it wrote on every run.

Crash safety: the horizon is written to the state file (atomically) before any
Parquet file, and files are named after their range. A run that dies part-way is
finished by the next one, which reuses the pending horizon, deletes what the dead
run wrote for that range and writes it again: nothing lost, nothing doubled. The
state moves to the horizon only after every file is in place (``os.replace`` in a
folder; an S3 object appears only once its upload completes).

Rows updated in place keep their time, so they are not exported again (a replay in
``update`` mode); corrected feedback gets a new time and is exported again, and the
``feedback`` view keeps the latest per subject and head.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Integer, Select, Table, select
from sqlalchemy.sql.elements import ColumnElement

from inferstream.analytics.places import (
    STATE_FILE,
    ExportPlace,
    FolderPlace,
    open_place,
    pyarrow_module,
)
from inferstream.envelope import now_us
from inferstream.errors import InferstreamError
from inferstream.store import ResultsStore, schema

#: The export folder of a deployment: the chore exports there, the API reads it.
ANALYTICS_DIR_ENV = "INFERSTREAM_ANALYTICS_DIR"
#: Rows a Parquet file holds at most (a chunk of the stream of one tenant's table).
CHUNK_ROWS = 100_000
DEFAULT_SETTLE_S = 300.0
#: Names that are safe as a path segment of the layout.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.@+-]+")


class ExportError(InferstreamError):
    """The export folder or its state cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ExportTable:
    """One exported table: its time column and whether it is partitioned by application."""

    name: str
    table: Table
    time_column: str
    by_app: bool = True

    def columns(self) -> list[str]:
        """The columns a Parquet file holds (the partition keys live in the path)."""
        skip = {"tenant", "app"}
        return [c.name for c in self.table.columns if c.name not in skip]


TABLES: tuple[ExportTable, ...] = (
    ExportTable("records", schema.records, "stored_at_us"),
    ExportTable("predictions", schema.predictions, "stored_at_us"),
    ExportTable("feedback", schema.feedback, "at_us"),
    ExportTable("dead_letters", schema.dead_letters, "at_us", by_app=False),
)
TABLE_NAMES = tuple(t.name for t in TABLES)


@dataclass
class ExportResult:
    """What one run wrote: rows per table, the horizon reached, files written."""

    horizon_us: int
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLE_NAMES, 0))
    files: int = 0
    resumed: bool = False

    def summary(self) -> str:
        counts = ", ".join(f"{n} {name}" for name, n in self.rows.items())
        when = dt.datetime.fromtimestamp(self.horizon_us / 1e6, dt.UTC).isoformat(
            timespec="seconds"
        )
        again = " (finished a run that had stopped part-way)" if self.resumed else ""
        return f"exported {counts} in {self.files} files, through {when}{again}"


def arrow_schema(spec: ExportTable) -> Any:
    """The Parquet schema of a table's files (JSON columns as JSON text)."""
    pa = pyarrow_module()
    types = {BigInteger: pa.int64(), Integer: pa.int32(), Float: pa.float64()}
    fields = []
    for name in spec.columns():
        column_type = spec.table.c[name].type
        kind = next((t for cls, t in types.items() if isinstance(column_type, cls)), pa.string())
        fields.append(pa.field(name, kind, nullable=bool(spec.table.c[name].nullable)))
    return pa.schema(fields)


def export(
    store: ResultsStore,
    folder: Path | str,
    *,
    tenants: Sequence[str] = (),
    settle_s: float = DEFAULT_SETTLE_S,
    now: int | None = None,
) -> ExportResult:
    """Export what is new since the last run into ``folder``: a local folder (made if
    missing) or ``s3://bucket/prefix``."""
    place = open_place(folder)
    state = ExportState.load(place)
    resumed = state.pending is not None
    horizon = (
        state.pending if state.pending is not None else (now or now_us()) - int(settle_s * 1e6)
    )
    if not resumed:
        state.pending = horizon
        state.save(place)
    result = ExportResult(horizon, resumed=resumed)
    for tenant in sorted(set(tenants) or discover_tenants(store)):
        for spec in TABLES:
            since = state.through(tenant, spec.name)
            if since >= horizon:
                continue
            rows, files = _export_range(store, place, spec, tenant, since=since, until=horizon)
            result.rows[spec.name] += rows
            result.files += files
            state.advance(tenant, spec.name, horizon)
    state.pending = None
    state.save(place)
    return result


def discover_tenants(store: ResultsStore) -> list[str]:
    """Tenants the API made, and those with rows this connection may see (every one on
    SQLite, or on PostgreSQL for a role that bypasses row-level security)."""
    names = set(store.tenant_names())
    with store.engine.connect() as conn:
        for spec in TABLES:
            names.update(
                str(n) for n in conn.execute(select(spec.table.c.tenant).distinct()).scalars()
            )
    return sorted(names)


def _export_range(
    store: ResultsStore,
    place: ExportPlace,
    spec: ExportTable,
    tenant: str,
    *,
    since: int,
    until: int,
) -> tuple[int, int]:
    """One tenant's rows of one table in ``(since, until]``, as Parquet files."""
    _check_name("tenant", tenant)
    base = f"tenant={tenant}/{spec.name}"
    stem = f"part-{since + 1}-{until}-"
    for stale in place.files(base):
        name = stale.rsplit("/", 1)[-1]
        if (name.startswith(stem) and name.endswith(".parquet")) or (
            name.startswith(".") and name.endswith(".tmp")
        ):
            place.remove(stale)  # what a run that stopped part-way wrote of this range
    rows = files = 0
    with store.tenant_transaction(tenant, "export rows from") as conn:
        result = conn.execution_options(stream_results=True).execute(
            _range_query(spec, tenant, since, until)
        )
        for number, chunk in enumerate(result.mappings().partitions(CHUNK_ROWS)):
            for (app, day), part in _by_partition(spec, chunk).items():
                where = f"{base}/app={app}" if spec.by_app else base
                table = pyarrow_module().Table.from_pylist(part, schema=arrow_schema(spec))
                place.write_parquet(f"{where}/date={day}/{stem}{number:05d}.parquet", table)
                files += 1
            rows += len(chunk)
    return rows, files


def _range_query(spec: ExportTable, tenant: str, since: int, until: int) -> Select[Any]:
    table = spec.table
    time = table.c[spec.time_column]
    keys: list[ColumnElement[Any]] = [c for c in table.primary_key.columns]
    conditions = [table.c.tenant == tenant, time > since, time <= until]
    if spec.name != "predictions":
        return select(table).where(*conditions).order_by(time, *keys)
    # Predictions take their application from their record.
    records = schema.records
    joined = table.outerjoin(
        records, (records.c.tenant == table.c.tenant) & (records.c.id == table.c.record_id)
    )
    return select(table, records.c.app).select_from(joined).where(*conditions).order_by(time, *keys)


def _by_partition(
    spec: ExportTable, chunk: Iterable[Any]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    parts: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    json_columns = {c.name for c in spec.table.columns if isinstance(c.type, JSON)}
    for row in chunk:
        app = str(row["app"] or "_") if spec.by_app else ""
        if spec.by_app:
            _check_name("application", app)
        values = {name: row[name] for name in spec.columns()}
        for name in json_columns:
            values[name] = json.dumps(values[name], separators=(",", ":"))
        parts[(app, _day(int(row[spec.time_column])))].append(values)
    return parts


def _day(at_us: int) -> str:
    return dt.datetime.fromtimestamp(at_us / 1e6, dt.UTC).date().isoformat()


def _check_name(what: str, name: str) -> None:
    if not _SAFE_NAME.fullmatch(name) or name.startswith("."):
        raise ExportError(
            f"{what} {name!r} cannot name a folder of the export (letters, digits and "
            "_ . @ + - only); rename it in the store or export the other tenants with --tenant"
        )


@dataclass
class ExportState:
    """How far each tenant's tables are exported, and a run in progress (its horizon)."""

    tenants: dict[str, dict[str, int]] = field(default_factory=dict)
    pending: int | None = None

    def through(self, tenant: str, table: str) -> int:
        return self.tenants.get(tenant, {}).get(table, -1)

    def advance(self, tenant: str, table: str, horizon: int) -> None:
        self.tenants.setdefault(tenant, {})[table] = horizon

    @classmethod
    def load(cls, where: ExportPlace | Path) -> ExportState:
        place = FolderPlace(where) if isinstance(where, Path) else where
        try:
            data = place.read(STATE_FILE)
            if data is None:
                return cls()
            raw = json.loads(data)
            return cls(
                {t: {k: int(v) for k, v in tables.items()} for t, tables in raw["tenants"].items()},
                None if raw.get("pending_us") is None else int(raw["pending_us"]),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ExportError(
                f"{place.url}/{STATE_FILE}: cannot read the export's state ({exc}); restore "
                "it, or export into an empty folder"
            ) from exc

    def save(self, place: ExportPlace) -> None:
        place.write(
            STATE_FILE, json.dumps({"tenants": self.tenants, "pending_us": self.pending}).encode()
        )
