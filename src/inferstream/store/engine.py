"""Opening the database behind a store URL, tuned for several writer processes.

``sqlite:///path.db`` (the default, one machine) gets WAL mode, so readers never
block the writer, and a busy timeout, so workers in other processes wait for the
write lock instead of failing. ``postgresql://`` URLs are driven by psycopg 3
(the ``postgres`` extra); the bare scheme is normalised to ``postgresql+psycopg``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from inferstream.errors import ConfigError, MissingExtraError, StoreError

#: How long a SQLite writer waits for another process's write lock.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def parse_store_url(url: str | URL) -> URL:
    """Validate a store URL and pick the driver; raise :class:`ConfigError` when unusable."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"store URL {url!r} is not a database URL; use sqlite:///path/to/results.db "
            "or postgresql://user@host/db"
        ) from exc
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed
    raise ConfigError(
        f"store URL scheme {parsed.drivername!r} is not supported; use sqlite:/// or postgresql://"
    )


def make_engine(url: str | URL, **engine_args: Any) -> Engine:
    """An engine for ``url`` with the per-dialect settings the store relies on."""
    parsed = parse_store_url(url)
    if parsed.get_backend_name() == "postgresql":
        try:
            import psycopg  # noqa: F401 - fail here with the extra's name, not deep in SQLAlchemy
        except ImportError as exc:
            raise MissingExtraError("psycopg", "postgres") from exc
        engine_args.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **engine_args)
    _make_folder(parsed.database)
    engine = create_engine(parsed, **engine_args)
    event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _make_folder(database: str | None) -> None:
    """Create the folder of a SQLite file, as the embedded bus does for its own.

    SQLite creates a missing file but not a missing folder, and a fresh working
    directory has no ``.inferstream/<pipeline>/`` for a pipeline file's default store URL.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    folder = Path(database).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the folder {folder} for the results store: {exc.strerror}; "
            "create it yourself, or pass --store with a path you can write"
        ) from exc


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL itself needs the lock.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        # synchronous stays FULL: the worker commits bus offsets once we return,
        # so a committed batch must survive a power loss too.
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def describe(url: str | URL) -> str:
    """The URL without its password, for error messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


class SideTables:
    """A few tables of the runtime's own beside the results (task state, replay requests).

    They are made on open rather than by the results store's migrations: workers that
    keep state open them before any API has run a migration, and dropping them loses
    nothing a restart cannot rebuild from the log. What the owners share is here: the
    engine, creation that tolerates another process creating the tables at the same
    moment, write transactions that lock up front, and errors that name the store.
    """

    #: What the tables are, for error messages ("the state store").
    noun = "the store"

    def __init__(self, url: str, metadata: MetaData) -> None:
        self.url = describe(url)
        self._engine = make_engine(url)
        self._sqlite = self._engine.dialect.name == "sqlite"
        self._metadata = metadata
        # Made on first use, not here: opening never needs the database up, so a
        # worker that only watches these tables starts during a store outage.
        self._ready = False

    def close(self) -> None:
        self._engine.dispose()

    def _ensure_tables(self) -> None:
        if self._ready:
            return
        with self._errors(f"create the tables of {self.noun} in"):
            try:
                self._create()
            except DBAPIError:
                # Another process created them between our check and our CREATE; the
                # second check finds them. A second failure is a real one.
                self._create()
        self._ready = True

    def _create(self) -> None:
        with self._engine.begin() as conn:
            if self._sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            self._metadata.create_all(conn, checkfirst=True)

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A connection for reading, the tables made first if need be."""
        self._ensure_tables()
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction that on SQLite takes the write lock at once.

        Python's sqlite3 begins a deferred transaction, whose first read takes a
        snapshot that a concurrent writer can invalidate: the later write then fails
        with SQLITE_BUSY without waiting. BEGIN IMMEDIATE waits (busy timeout) for the
        lock up front, so a read-then-write cannot interleave with another process's.
        """
        self._ensure_tables()
        with self._engine.begin() as conn:
            if self._sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Database failures as :class:`StoreError` (transient: callers retry)."""
        try:
            yield
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreError(
                f"could not {action} {self.noun} at {self.url}: {type(cause).__name__}: "
                f"{cause}; check that the database is reachable (workers retry until it is)"
            ) from exc
