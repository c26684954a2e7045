"""Failed sign-in counters shared by every API process (back-off against guessing).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Keyed by scope ("source:<address>", "user:<tenant>/<name>", "key:<tenant>/<id>"):
    # a source spans tenants, so the table gets no row-level security.
    op.create_table(
        "auth_failures",
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_failure_at_us", sa.BigInteger, nullable=False),
        sa.Column("blocked_until_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_auth_failures"),
    )
    op.create_index("ix_auth_failures_last_failure_at_us", "auth_failures", ["last_failure_at_us"])


def downgrade() -> None:
    op.drop_table("auth_failures")
