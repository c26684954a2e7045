"""Results, shadow results, dead letters and feedback, with row-level security.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

TENANT_TABLES = ("results", "shadow_results", "dead_letters", "feedback")


def _prediction_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("egg_id", sa.String()),
        sa.Column("tray", sa.String()),
        sa.Column("scanner", sa.String()),
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
    ]


def _index(table: str, *columns: str) -> None:
    op.create_index(f"ix_{table}_{'_'.join(columns)}", table, list(columns))


def upgrade() -> None:
    op.create_table(
        "results",
        *_prediction_columns(),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_results"),
    )
    _index("results", "tenant", "egg_id")
    for column in ("tray", "scanner", "label", "model_version"):
        _index("results", "tenant", column, "stored_at_us")
    _index("results", "tenant", "created_at_us")
    _index("results", "tenant", "stored_at_us", "id")

    op.create_table(
        "shadow_results",
        *_prediction_columns(),
        sa.PrimaryKeyConstraint(
            "tenant", "id", "model_name", "model_version", name="pk_shadow_results"
        ),
    )
    _index("shadow_results", "tenant", "egg_id")
    _index("shadow_results", "tenant", "model_version", "stored_at_us")

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("root_id", sa.String(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("error_type", sa.String(), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("trace_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_dead_letters"),
    )
    _index("dead_letters", "tenant", "at_us", "id")
    _index("dead_letters", "tenant", "stage", "at_us")

    op.create_table(
        "feedback",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("egg_id", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "egg_id", name="pk_feedback"),
    )
    if op.get_bind().dialect.name == "postgresql":
        for table in TENANT_TABLES:
            _enable_row_level_security(table)


def _enable_row_level_security(table: str) -> None:
    # FORCE: the table owner (usually the app's own role) is subject to the policy
    # too. current_setting(..., true) is NULL when unset, so a connection that did
    # not name its tenant sees nothing rather than everything. Superusers and
    # BYPASSRLS roles still see all rows: run the app as an ordinary role.
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {table} "
        "USING (tenant = current_setting('inferstream.tenant', true)) "
        "WITH CHECK (tenant = current_setting('inferstream.tenant', true))"
    )


def downgrade() -> None:
    for table in reversed(TENANT_TABLES):
        op.drop_table(table)
