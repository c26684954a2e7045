"""The service API's tables: tenants, users, API keys and accepted scans.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

TENANT_TABLES = ("users", "api_keys", "scans")


def upgrade() -> None:
    # tenants spans tenants (it lists them), so it gets no row-level security.
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_tenants"),
    )
    op.create_table(
        "users",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "username", name="pk_users"),
    )
    op.create_table(
        "api_keys",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("secret_sha256", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger),
        sa.PrimaryKeyConstraint("tenant", "key_id", name="pk_api_keys"),
    )
    op.create_table(
        "scans",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("content_type", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("blob_sha256", sa.String(), nullable=False),
        sa.Column("egg_id", sa.String()),
        sa.Column("tray", sa.String()),
        sa.Column("scanner", sa.String()),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("trace_id", sa.String(), nullable=False),
        sa.Column("received_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_scans"),
    )
    op.create_index("ix_scans_tenant_received_at_us", "scans", ["tenant", "received_at_us"])
    if op.get_bind().dialect.name == "postgresql":
        for table in TENANT_TABLES:
            _enable_row_level_security(table)


def _enable_row_level_security(table: str) -> None:
    # Same policy as v0001: FORCE so the owning role is bound too; unset tenant sees nothing.
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {table} "
        "USING (tenant = current_setting('inferstream.tenant', true)) "
        "WITH CHECK (tenant = current_setting('inferstream.tenant', true))"
    )


def downgrade() -> None:
    for table in ("scans", "api_keys", "users", "tenants"):
        op.drop_table(table)
