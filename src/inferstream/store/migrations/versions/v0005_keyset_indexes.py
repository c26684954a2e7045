"""Filtered listings page through an index that also orders them.

A listing filtered by group, source, label or model version is ordered by
(stored_at_us, id). The indexes on (tenant, <column>, stored_at_us) lacked the id, so
SQLite chose the time index instead and walked every record of the tenant, filtering
as it went (measured: 3.4 ms a page at 20,000 records in 50 groups, against 1.9 ms
unfiltered). With the id, the filter's own index yields the page in order.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = ("group_key", "source", "label", "model_version")


def upgrade() -> None:
    for column in COLUMNS:
        op.drop_index(f"ix_records_tenant_{column}_stored_at_us", table_name="records")
        op.create_index(
            f"ix_records_tenant_{column}_stored_at_us_id",
            "records",
            ["tenant", column, "stored_at_us", "id"],
        )


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_index(f"ix_records_tenant_{column}_stored_at_us_id", table_name="records")
        op.create_index(
            f"ix_records_tenant_{column}_stored_at_us",
            "records",
            ["tenant", column, "stored_at_us"],
        )
