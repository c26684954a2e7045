"""Generic records and predictions replace the flagship-shaped results tables.

``results`` (one row per scan, egg_id/tray/scanner columns) and ``shadow_results``
become ``records`` (one row per output record, the application's subject, group
and source, typed attributes, root and parent ids) and ``predictions`` (every
prediction of every head, model and role); ``feedback`` is keyed by application,
subject and head. Every row is carried over: stores made before this revision held
only the eggs application, whose subject is the egg, group the tray, source the
scanner and head "sex".

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

#: What every store before this revision held.
OLD_APP, OLD_HEAD = "eggs", "sex"
NEW_TENANT_TABLES = ("records", "predictions", "feedback")
_BATCH = 5000


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Row-level security is FORCEd on the old tables, so their owner, migrating
        # with no tenant named, would read none of their rows and copy nothing.
        for table in ("results", "shadow_results", "feedback"):
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    _create_records()
    _create_predictions()
    op.rename_table("feedback", "feedback_0003")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE feedback_0003 RENAME CONSTRAINT pk_feedback TO pk_feedback_0003")
    _create_feedback()
    _copy_results()
    _copy_shadows()
    _copy_feedback()
    for table in ("results", "shadow_results", "feedback_0003"):
        op.drop_table(table)
    # The API's record of accepted scans names the application's attributes alike.
    for old, new in (("egg_id", "subject"), ("tray", "group_key"), ("scanner", "device")):
        op.execute(f"ALTER TABLE scans RENAME COLUMN {old} TO {new}")
    if op.get_bind().dialect.name == "postgresql":
        for table in NEW_TENANT_TABLES:
            _enable_row_level_security(table)


def _create_records() -> None:
    op.create_table(
        "records",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("app", sa.String(), nullable=False),
        sa.Column("root_id", sa.String(), nullable=False),
        sa.Column("parent_id", sa.String()),
        sa.Column("subject", sa.String()),
        sa.Column("group_key", sa.String()),
        sa.Column("source", sa.String()),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("head", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("ingested_at_us", sa.BigInteger, nullable=False),
        sa.Column("stored_at_us", sa.BigInteger, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("lineage", sa.JSON, nullable=False),
        sa.Column("trace_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_records"),
    )
    for columns in (
        ("tenant", "stored_at_us", "id"),
        ("tenant", "root_id"),
        ("tenant", "subject"),
        ("tenant", "group_key", "stored_at_us"),
        ("tenant", "source", "stored_at_us"),
        ("tenant", "label", "stored_at_us"),
        ("tenant", "model_version", "stored_at_us"),
        ("tenant", "created_at_us"),
    ):
        op.create_index(f"ix_records_{'_'.join(columns)}", "records", list(columns))


def _create_predictions() -> None:
    op.create_table(
        "predictions",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("record_id", sa.String(), nullable=False),
        sa.Column("head", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("predicted_at_us", sa.BigInteger, nullable=False),
        sa.Column("stored_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant", "record_id", "head", "role", "model_name", "model_version",
            name="pk_predictions",
        ),
    )  # fmt: skip
    op.create_index(
        "ix_predictions_tenant_model_version_stored_at_us",
        "predictions",
        ["tenant", "model_version", "stored_at_us"],
    )


def _create_feedback() -> None:
    op.create_table(
        "feedback",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("app", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("head", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "app", "subject", "head", name="pk_feedback"),
    )


def _rows(table: str) -> Iterator[list[dict[str, Any]]]:
    """The old table's rows in batches (tables reflected, so the code's schema is not used)."""
    bind = op.get_bind()
    old = sa.Table(table, sa.MetaData(), autoload_with=bind)
    result = bind.execute(sa.select(old)).mappings()
    while batch := result.fetchmany(_BATCH):
        yield [dict(row) for row in batch]


def _table(name: str) -> sa.Table:
    return sa.Table(name, sa.MetaData(), autoload_with=op.get_bind())


def _copy_results() -> None:
    records, predictions = _table("records"), _table("predictions")
    for batch in _rows("results"):
        op.get_bind().execute(sa.insert(records), [_record(row) for row in batch])
        champions = [_prediction(row, "champion") for row in batch]
        op.get_bind().execute(sa.insert(predictions), champions)


def _copy_shadows() -> None:
    predictions = _table("predictions")
    for batch in _rows("shadow_results"):
        op.get_bind().execute(sa.insert(predictions), [_prediction(r, "shadow") for r in batch])


def _copy_feedback() -> None:
    feedback = _table("feedback")
    for batch in _rows("feedback_0003"):
        rows = [
            {"tenant": row["tenant"], "app": OLD_APP, "subject": row["egg_id"], "head": OLD_HEAD,
             "label": row["label"], "source": row["source"], "at_us": row["at_us"]}
            for row in batch
        ]  # fmt: skip
        op.get_bind().execute(sa.insert(feedback), rows)


def _record(row: dict[str, Any]) -> dict[str, Any]:
    attributes = {name: row[name] for name in ("egg_id", "tray", "scanner") if row[name]}
    return {
        "tenant": row["tenant"], "id": row["id"], "app": OLD_APP, "root_id": row["id"],
        "parent_id": None, "subject": row["egg_id"], "group_key": row["tray"],
        "source": row["scanner"], "attributes": attributes, "head": OLD_HEAD,
        **{name: row[name] for name in (
            "label", "confidence", "scores", "model_name", "model_version", "created_at_us",
            "ingested_at_us", "stored_at_us", "latency_ms", "lineage", "trace_id", "status",
        )},
    }  # fmt: skip


def _prediction(row: dict[str, Any], role: str) -> dict[str, Any]:
    return {
        "tenant": row["tenant"], "record_id": row["id"], "head": OLD_HEAD, "role": role,
        "model_name": row["model_name"], "model_version": row["model_version"],
        "label": row["label"], "confidence": row["confidence"], "scores": row["scores"],
        "predicted_at_us": row["stored_at_us"], "stored_at_us": row["stored_at_us"],
    }  # fmt: skip


def _enable_row_level_security(table: str) -> None:
    # As in v0001: FORCE so the owning role is bound too; an unset tenant sees nothing.
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {table} "
        "USING (tenant = current_setting('inferstream.tenant', true)) "
        "WITH CHECK (tenant = current_setting('inferstream.tenant', true))"
    )


def downgrade() -> None:
    raise NotImplementedError("records cannot be folded back into one row per scan")
