"""Running the store's Alembic migrations from code, safely from many processes.

Every worker opens the store and so may try to migrate at the same moment; a
lock makes the others wait and then find nothing to do. PostgreSQL uses a
transaction-scoped advisory lock per schema, SQLite a lock file beside the
database file.

During a rolling upgrade a process of the previous release may open a database
that the new release has already migrated, to a revision the older code does not
know. Migrations only ever add (``docs/deploy.md``, "Rolling upgrades"), so such a
process runs on the newer schema as it is, once it has checked that every table
and column it uses is there, instead of failing at start.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from inferstream.errors import InferstreamError
from inferstream.store.engine import describe
from inferstream.store.schema import metadata

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('inferstream.store:' || current_schema()))"


class SchemaMismatch(InferstreamError):
    """The database is at a revision this release does not know, and lacks a table or
    column this release uses: a newer release removed or renamed it."""


@dataclass(frozen=True, slots=True)
class Migration:
    """What :func:`upgrade` found and left: the revisions before and after, and this
    release's newest."""

    before: str | None
    after: str | None
    head: str | None
    #: The database was at a revision this release does not know: a newer release
    #: migrated it, and nothing was done.
    newer: bool = False


def alembic_config() -> Config:
    """An Alembic config pointing at the shipped migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> Migration:
    """Bring the database behind ``engine`` up to ``revision``; a no-op when it is there,
    or when a newer release has migrated it beyond what this code knows."""
    config = alembic_config()
    scripts = ScriptDirectory.from_config(config)
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
        before = current_revision(connection)
        head = scripts.get_current_head()
        known = {script.revision for script in scripts.walk_revisions()}
        if before is not None and before not in known:
            _check_newer_schema(connection, describe(engine.url), before, head)
            return Migration(before, before, head, newer=True)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        return Migration(before, current_revision(connection), head)


def _check_newer_schema(connection: Connection, url: str, found: str, head: str | None) -> None:
    """Refuse a newer schema that lacks what this code uses; otherwise say why we run."""
    diffs = compare_metadata(MigrationContext.configure(connection), metadata)
    # Only what this code has and the database lacks matters; what the database has
    # beyond it (the newer release's additions, indexes on attributes) is expected.
    missing = [_describe_missing(diff) for diff in diffs if _is_missing(diff)]
    if missing:
        raise SchemaMismatch(
            f"the store at {url} is at revision {found}, which this release does not know "
            f"(its newest is {head}), and lacks {', '.join(missing)} that this release uses: "
            "a newer release's migration removed what an older one needs. Run the newer "
            "release here"
        )
    log.warning(
        "the store at %s is at revision %s, newer than this release knows (%s): a newer "
        "release has migrated it. Running on it as it is (migrations only add); upgrade "
        "this process to the newer release",
        url, found, head,
    )  # fmt: skip


def _is_missing(diff: object) -> bool:
    return isinstance(diff, tuple) and diff[0] in ("add_table", "add_column")


def _describe_missing(diff: tuple[object, ...]) -> str:
    if diff[0] == "add_table":
        return f"the table {getattr(diff[1], 'name', diff[1])}"
    return f"the column {diff[2]}.{getattr(diff[3], 'name', diff[3])}"


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
