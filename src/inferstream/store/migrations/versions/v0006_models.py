"""The model registry: versions, aliases, their audit trail, and workers' switches.

A model row's ``owner`` is "" for the deployment's models, or the tenant that
registered a private one. On PostgreSQL, row-level security lets a transaction see the
deployment's rows and its own tenant's, and write only rows of the owner it names
("" when it names no tenant: the operator's CLI).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

OWNED = ("model_versions", "model_aliases", "model_audit")
_SETTING = "coalesce(current_setting('inferstream.tenant', true), '')"


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("artifact_uri", sa.String(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=False),
        sa.Column("registered_at_us", sa.BigInteger(), nullable=False),
        sa.Column("registered_by", sa.String(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "name", "version", name="pk_model_versions"),
    )
    op.create_table(
        "model_aliases",
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("alias", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("set_at_us", sa.BigInteger(), nullable=False),
        sa.Column("set_by", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "name", "alias", name="pk_model_aliases"),
    )
    op.create_table(
        "model_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("alias", sa.String(), nullable=False),
        sa.Column("from_version", sa.String(), nullable=False),
        sa.Column("to_version", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_audit"),
    )
    op.create_index("ix_model_audit_owner_name_id", "model_audit", ["owner", "name", "id"])
    op.create_table(
        "model_switches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("worker", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("alias", sa.String(), nullable=False),
        sa.Column("from_version", sa.String(), nullable=False),
        sa.Column("to_version", sa.String(), nullable=False),
        sa.Column("positions", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_switches"),
    )
    op.create_index("ix_model_switches_name_at_us", "model_switches", ["name", "at_us"])
    if op.get_bind().dialect.name == "postgresql":
        for table in OWNED:
            op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
            op.execute(
                f"CREATE POLICY owner_isolation ON {table} "
                f"USING (owner = '' OR owner = {_SETTING}) "
                f"WITH CHECK (owner = {_SETTING})"
            )


def downgrade() -> None:
    for table in ("model_switches", "model_audit", "model_aliases", "model_versions"):
        op.drop_table(table)
