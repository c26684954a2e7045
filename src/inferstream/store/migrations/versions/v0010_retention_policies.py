"""Stored retention policies: how many days each tenant's results are kept.

``retention_policies`` holds at most one row per tenant: the days its records (and with
them its predictions, feedback, accepted scans, dead letters and the blobs they name)
are kept, who set it and when. The pipeline's housekeeping expires each tenant's
results by its row (``inferstream.store.retention``). On PostgreSQL the table is under
the same row-level security as the other per-tenant tables: a tenant's transaction
reads and writes its own row only.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

_TENANT = "coalesce(current_setting('inferstream.tenant', true), '')"


def upgrade() -> None:
    op.create_table(
        "retention_policies",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("keep_days", sa.Integer(), nullable=False),
        sa.Column("set_by", sa.String(), nullable=False),
        sa.Column("set_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_retention_policies"),
        sa.CheckConstraint(
            "keep_days >= 1 AND keep_days <= 36500", name="ck_retention_policies_keep_days"
        ),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Same policy as v0007: FORCE binds the owner too; no tenant named sees nothing.
        op.execute("ALTER TABLE retention_policies ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE retention_policies FORCE ROW LEVEL SECURITY")
        op.execute(
            "CREATE POLICY tenant_isolation ON retention_policies "
            f"USING (tenant = {_TENANT}) WITH CHECK (tenant = {_TENANT})"
        )


def downgrade() -> None:
    op.drop_table("retention_policies")
