"""Rolling upgrade, the results store: the previous release's code and this one's write
and read the same database, on both sides of this release's migrations, and a process
opens a store that a newer release has migrated beyond what it knows.

The previous release writes and reads through its own store code in a subprocess
(``upgrade_probe``), this release in the test's process; both write the same rows.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from previous_release import assert_same_reads, extract_previous_release, probe, probes
from sqlalchemy import Engine, inspect
from upgrade_probe import read_store, store_rows, write_store

from inferstream.cli import main
from inferstream.store import ResultsStore
from inferstream.store.migrate import (
    MIGRATIONS_DIR,
    SchemaMismatch,
    alembic_config,
    head_revision,
)

TENANT = "farm"
ROWS = 10  # per writer


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_previous_release(tmp_path_factory.mktemp("previous-release"))


def _expected_ids(*prefixes: str) -> set[str]:
    return {row.id for p in prefixes for row in store_rows(TENANT, p, ROWS)["results"]}


def test_the_previous_release_writes_and_reads_a_store_this_one_migrated(
    store_url: str, previous: Path
) -> None:
    with ResultsStore(store_url) as store:  # this release migrates
        assert store.count_results(TENANT) == 0
    write_store(store_url, TENANT, "new", ROWS)
    _, old_view = probes(
        previous,
        ["write-store", store_url, TENANT, "old", str(ROWS)],
        ["read-store", store_url, TENANT],
    )
    new_view = read_store(store_url, TENANT)
    assert set(new_view["records"]) == _expected_ids("old", "new")
    assert_same_reads(old_view, new_view)
    # What each wrote is what was meant, read back by this release.
    for prefix in ("old", "new"):
        rows = store_rows(TENANT, prefix, ROWS)
        for row in rows["results"]:
            got = new_view["records"][row.id]
            assert got["row"]["label"] == row.label and got["row"]["scores"] == row.scores
            assert got["row"]["attributes"] == row.attributes
            assert {p["role"] for p in got["predictions"]} == {"champion", "shadow"}
            assert got["feedback"]["label"] == "female"
        assert {d.id for d in rows["letters"]} <= set(new_view["dead_letters"])


def _schema(engine: Engine) -> dict[str, dict[str, dict[str, Any]]]:
    """Each table's columns: type, nullable, default."""
    found = inspect(engine)
    return {
        table: {
            column["name"]: {
                "type": str(column["type"]),
                "nullable": column["nullable"],
                "default": column.get("default"),
            }
            for column in found.get_columns(table)
        }
        for table in found.get_table_names()
    }


def test_a_store_at_the_previous_head_upgrades_with_its_rows_intact(
    store_url: str, previous: Path
) -> None:
    made, _, before = probes(
        previous,
        ["migrate", store_url],
        ["write-store", store_url, TENANT, "old", str(ROWS)],
        ["read-store", store_url, TENANT],
    )
    assert made["before"] is None and made["after"] is not None
    with ResultsStore(store_url, migrate=False) as store:
        old_schema = _schema(store.engine)
        done = store.migrate()
        new_schema = _schema(store.engine)
    assert (done.before, done.after, done.newer) == (made["after"], head_revision(), False)

    # The previous release keeps working on the migrated schema: what it had is still
    # there, of the same type, and what was added to its tables it need not fill in.
    for table, columns in old_schema.items():
        assert table in new_schema, f"the migration removed the table {table}"
        for name, column in columns.items():
            assert new_schema[table].get(name) == column, f"{table}.{name} changed"
        for name in new_schema[table].keys() - columns.keys():
            added = new_schema[table][name]
            assert added["nullable"] or added["default"] is not None, (
                f"{table}.{name} was added NOT NULL without a default: the previous "
                "release's inserts, which do not name it, would fail"
            )

    # Old rows intact, read by this release; the old release reads them as before.
    after = read_store(store_url, TENANT)
    assert_same_reads(before, after)
    assert probe(previous, "read-store", store_url, TENANT) == before
    # Both write on the migrated schema; each reads the other's rows.
    write_store(store_url, TENANT, "new", ROWS)
    _, old_view = probes(
        previous,
        ["write-store", store_url, TENANT, "old-after", str(ROWS)],
        ["read-store", store_url, TENANT],
    )
    new_view = read_store(store_url, TENANT)
    assert set(new_view["records"]) == _expected_ids("old", "new", "old-after")
    assert_same_reads(old_view, new_view)


# -- a store migrated by a newer release ----------------------------------------------

FUTURE = '''"""A migration of a release after this one (made up by the test).

Revision ID: 9999
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    {body}
'''

#: What a later release may do: add a column no older writer fills, and a table.
ADDITIVE = """op.add_column("records", sa.Column("future_note", sa.String(), nullable=True))
    op.create_table("future_things", sa.Column("tenant", sa.String(), nullable=False))"""
#: What it must not: remove something an older release reads.
DESTRUCTIVE = """op.drop_table("feedback")"""


def _migrate_as_a_newer_release(url: str, folder: Path, body: str) -> None:
    """Migrate the store at ``url`` to this release's head and then to a made-up
    revision 9999 beyond it, whose upgrade is ``body``."""
    scripts = folder / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    future = FUTURE.format(head=head_revision(), body=body)
    (scripts / "versions" / "v9999_future.py").write_text(future)
    config = alembic_config()
    config.set_main_option("script_location", str(scripts))
    with ResultsStore(url) as store, store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "9999")


def test_a_process_opens_a_store_a_newer_release_migrated(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _migrate_as_a_newer_release(store_url, tmp_path, ADDITIVE)
    with caplog.at_level(logging.WARNING, logger="inferstream.store.migrate"):
        store = ResultsStore(store_url)  # migrates on open: finds 9999, which it lacks
    with store:
        done = store.migrate()
    assert (done.before, done.after, done.newer) == ("9999", "9999", True)
    assert "revision 9999, newer than this release knows" in caplog.text
    write_store(store_url, TENANT, "now", ROWS)
    view = read_store(store_url, TENANT)
    assert set(view["records"]) == _expected_ids("now")
    assert all(len(record["predictions"]) == 2 for record in view["records"].values())


def test_a_newer_schema_without_what_this_release_uses_is_refused_at_open(
    store_url: str, tmp_path: Path
) -> None:
    _migrate_as_a_newer_release(store_url, tmp_path, DESTRUCTIVE)
    with pytest.raises(SchemaMismatch, match=r"revision 9999.*lacks the table feedback"):
        ResultsStore(store_url)


def test_the_migrate_command_says_what_it_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inferstream.apps.eggs import APP

    url = f"sqlite:///{tmp_path / 'results.db'}"
    pipeline = str(APP.pipeline_path())
    assert main(["migrate", pipeline, "--store", url]) == 0
    assert f"migrated from an empty database to {head_revision()}" in capsys.readouterr().out
    assert main(["migrate", pipeline, "--store", url]) == 0
    assert f"already at revision {head_revision()}" in capsys.readouterr().out
    _migrate_as_a_newer_release(url, tmp_path, ADDITIVE)
    assert main(["migrate", pipeline, "--store", url]) == 0
    assert f"at revision 9999, newer than this release's {head_revision()}" in (
        capsys.readouterr().out
    )
