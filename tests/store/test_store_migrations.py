"""Migrations: they build the schema the code expects, and running them again is harmless."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from inferstream.errors import ConfigError, StoreError
from inferstream.store import ResultsStore
from inferstream.store.engine import SQLITE_BUSY_TIMEOUT_MS
from inferstream.store.migrate import current_revision, head_revision
from inferstream.store.schema import metadata

TABLES = {"records", "predictions", "dead_letters", "feedback"}


def test_open_migrates_to_head_and_again_is_a_no_op(store_url: str) -> None:
    with ResultsStore(store_url) as store:
        with store.engine.connect() as conn:
            assert current_revision(conn) == head_revision() == "0010"
        assert set(inspect(store.engine).get_table_names()) >= TABLES
        store.migrate()
    with ResultsStore(store_url) as again, again.engine.connect() as conn:
        assert current_revision(conn) == "0010"
        assert again.count_results("anyone") == 0


def test_migrated_database_matches_schema_module(store: ResultsStore) -> None:
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []


def test_migrate_false_leaves_the_database_alone(store_url: str) -> None:
    with ResultsStore(store_url, migrate=False) as store:
        assert not TABLES & set(inspect(store.engine).get_table_names())
        with pytest.raises(StoreError, match="migrated"):
            store.count_results("acme")


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    with ResultsStore(f"sqlite:///{tmp_path / 'r.db'}") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == SQLITE_BUSY_TIMEOUT_MS


def test_unsupported_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sqlite"):
        ResultsStore("mysql://db/results")
