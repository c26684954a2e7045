"""Running the store's Alembic migrations from code, safely from many processes.

Every worker opens the store and so may try to migrate at the same moment; a
lock makes the others wait and then find nothing to do. PostgreSQL uses a
transaction-scoped advisory lock per schema, SQLite a lock file beside the
database file.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('inferstream.store:' || current_schema()))"


def alembic_config() -> Config:
    """An Alembic config pointing at the shipped migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database behind ``engine`` up to ``revision``; a no-op when it is there."""
    config = alembic_config()
    with _file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Per schema, so stores in different schemas migrate independently.
            connection.execute(text(_PG_LOCK))
        else:
            # Python's sqlite3 opens a transaction only before INSERT/UPDATE/DELETE, so
            # each CREATE TABLE committed on its own: a worker killed mid-migration left
            # tables without their revision, and every later open failed with "table
            # results already exists". An explicit BEGIN makes the migration atomic.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


@contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
