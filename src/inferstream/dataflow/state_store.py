"""Where task state lives between micro-batches: two tables in a SQL database.

``StateStore("sqlite:///state.db")`` on one machine, ``postgresql://...`` in a
cluster; the tables (``dataflow_tasks``, ``dataflow_values``) belong to the runtime,
not to the results store's migrations, and are created on open.

Every commit is one transaction that moves the task row from the version it was
loaded at to the next one (a compare-and-set) and writes the changed values. A
worker that lost its task to another worker finds a different version, writes
nothing and gets :class:`~inferstream.errors.FencedError`. Database failures
surface as :class:`~inferstream.errors.StoreError`, which workers retry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Delete,
    Dialect,
    Insert,
    Integer,
    MetaData,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from inferstream.dataflow.task import TaskState
from inferstream.envelope import now_us
from inferstream.errors import FencedError, InferstreamError
from inferstream.store.engine import SideTables

metadata = MetaData()

tasks = Table(
    "dataflow_tasks",
    metadata,
    Column("grp", Text, primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("offsets", Text, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

values = Table(
    "dataflow_values",
    metadata,
    Column("grp", Text, primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

# One statement, so it reads one snapshot on both databases: a version never
# arrives with the values of another commit.
_LOAD = (
    select(tasks.c.version, tasks.c.offsets, values.c.key, values.c.value)
    .select_from(
        tasks.outerjoin(values, and_(values.c.grp == tasks.c.grp, values.c.part == tasks.c.part))
    )
    .where(tasks.c.grp == bindparam("b_grp"), tasks.c.part == bindparam("b_part"))
)

# Built once: building an UPDATE per commit cost more than running it.
_ADVANCE = (
    update(tasks)
    .where(
        tasks.c.grp == bindparam("b_grp"),
        tasks.c.part == bindparam("b_part"),
        tasks.c.version == bindparam("b_loaded"),
    )
    .values(
        version=bindparam("b_version"),
        offsets=bindparam("b_offsets"),
        updated_at_us=bindparam("b_updated_at_us"),
    )
)

_DELETE_KEYS = delete(values).where(
    values.c.grp == bindparam("b_grp"),
    values.c.part == bindparam("b_part"),
    values.c.key == bindparam("b_key"),
)


class UnserialisableState(InferstreamError, TypeError):
    """A value put into task state is not JSON; the operator must store JSON values."""


class StateStore(SideTables):
    """The durable state of every task, chosen by URL; safe to share between threads."""

    noun = "the state store"

    def __init__(self, url: str) -> None:
        super().__init__(url, metadata)
        dialect = sqlite if self._sqlite else postgresql
        # RETURNING, not rowcount: SQLAlchemy reports -1 for a psycopg INSERT's rowcount.
        self._insert_task: Insert = (
            dialect.insert(tasks)
            .on_conflict_do_nothing(index_elements=["grp", "part"])
            .returning(tasks.c.version)
        )
        upsert = dialect.insert(values)
        upsert_values = upsert.on_conflict_do_update(
            index_elements=["grp", "part", "key"], set_={"value": upsert.excluded.value}
        )
        self._upsert_values = _ManyRows(upsert_values, self._engine.dialect)
        self._delete_keys = _ManyRows(_DELETE_KEYS, self._engine.dialect)

    def load(self, group: str, partition: int) -> TaskState:
        """The stored state of a task; a fresh one (version 0, empty) when never stored."""
        params = {"b_grp": group, "b_part": partition}
        action = f"load task {_name(group, partition)} from"
        with self._errors(action), self._connection() as conn:
            rows = conn.execute(_LOAD, params).all()
        if not rows:
            return TaskState(group, partition)
        return TaskState(
            group,
            partition,
            version=rows[0].version,
            offsets=json.loads(rows[0].offsets),
            values={row.key: json.loads(row.value) for row in rows if row.key is not None},
        )

    def commit(self, task: TaskState) -> None:
        """Store the task's offsets and changed values as its next version, all or nothing.

        Raises :class:`FencedError`, writing nothing, when the stored version is no
        longer the one ``task`` was loaded at: another worker owns the task now.
        """
        written, deleted = task.changes()
        task_row = {
            "grp": task.group,
            "part": task.partition,
            "version": task.version + 1,
            "offsets": _dumps(task.offsets),
            "updated_at_us": now_us(),
        }
        # Encoded before the transaction, so no lock is held while we serialise.
        upserts = [_value_row(task, key, value) for key, value in written.items()]
        removals = [{"b_grp": task.group, "b_part": task.partition, "b_key": k} for k in deleted]
        with self._write(f"commit task {_name(task.group, task.partition)} to") as conn:
            if not self._advance(conn, task.version, task_row):
                raise FencedError(
                    f"task {_name(task.group, task.partition)} moved to another worker (or "
                    f"was reset) since this one loaded version {task.version}; its batch "
                    "will be redone there, so drop the task here and load it again if it "
                    "is assigned back"
                )
            if upserts:
                self._upsert_values.run(conn, upserts)
            if removals:
                self._delete_keys.run(conn, removals)
        task.mark_committed(task.version + 1)

    def reset(self, group: str) -> int:
        """Forget every task of ``group`` (to replay its inputs from scratch).

        Returns how many tasks were removed.
        """
        with self._write(f"reset the tasks of group {group!r} in") as conn:
            # Task rows first: on PostgreSQL that waits for a commit in flight on any
            # of them, so its values are gone too when the second delete runs.
            removed = conn.execute(delete(tasks).where(tasks.c.grp == group)).rowcount
            conn.execute(delete(values).where(values.c.grp == group))
        return removed

    def size(self, group: str) -> tuple[int, int]:
        """(keys, bytes of JSON) stored over all tasks of ``group``, for metrics."""
        # JSON is ASCII (json.dumps escapes the rest), so characters are bytes.
        size = func.coalesce(func.sum(func.length(values.c.value)), 0)
        stmt = select(func.count(), size).where(values.c.grp == group)
        with self._errors(f"measure group {group!r} in"), self._connection() as conn:
            keys, total = conn.execute(stmt).one()
        return int(keys), int(total)

    def groups(self) -> list[str]:
        """Consumer groups with at least one stored task, sorted."""
        stmt = select(tasks.c.grp).distinct().order_by(tasks.c.grp)
        with self._errors("list the groups of"), self._connection() as conn:
            return list(conn.execute(stmt).scalars())

    def _advance(self, conn: Connection, loaded: int, task_row: Mapping[str, Any]) -> bool:
        """Move the task row from version ``loaded`` to the next; False when it is elsewhere."""
        if loaded == 0:
            # The primary key decides between two first commits; the loser inserts nothing.
            return conn.execute(self._insert_task, dict(task_row)).first() is not None
        params = {f"b_{column}": value for column, value in task_row.items()}
        moved = conn.execute(_ADVANCE, {**params, "b_loaded": loaded})
        return moved.rowcount == 1

    @contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        """A write transaction whose failures become :class:`StoreError` naming ``action``."""
        with self._errors(action), self._transaction() as conn:
            yield conn


class _ManyRows:
    """A statement run for many rows by the database driver itself, compiled once.

    SQLAlchemy's executemany prepares each row's parameters in Python: 1.6 of the
    3.6 us a row cost on SQLite in a commit of 50 values. The changed values of a
    batch go straight to the driver's executemany instead.
    """

    def __init__(self, statement: Insert | Delete, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        #: Parameter names in order for a positional paramstyle (SQLite's ``?``);
        #: None for a named one (psycopg's ``%(name)s``), which takes the dicts as they are.
        self.names = compiled.positiontup

    def run(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        names = self.names
        if names is None:
            conn.exec_driver_sql(self.sql, rows)
        else:
            conn.exec_driver_sql(self.sql, [tuple(row[n] for n in names) for row in rows])


def _value_row(task: TaskState, key: str, value: Any) -> dict[str, Any]:
    try:
        encoded = _dumps(value)
    except (TypeError, ValueError) as exc:
        raise UnserialisableState(
            f"the value of key {key!r} in task {_name(task.group, task.partition)} is not "
            f"JSON ({exc}); store dicts, lists, strings, numbers, booleans or None"
        ) from exc
    return {"grp": task.group, "part": task.partition, "key": key, "value": encoded}


# One encoder for every value: json.dumps with separators builds a new one per call.
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _name(group: str, partition: int) -> str:
    return f"{group!r}/{partition}"
