"""Encryption at rest of blobs: each tenant's data keys, wrapped, and shredded tenants.

``blob_data_keys`` holds every data key (DEK) of every tenant, wrapped by a
key-encryption key (KEK) the database never sees; ``blob_key_shreds`` remembers which
tenants were crypto-shredded (their rows deleted), so a read of their blobs says so.

Neither table is under row-level security: rotating the KEK rewraps every tenant's keys
in one pass, like ``tenants`` spans tenants. A wrapped key is useless without the KEK,
and the wrap binds each row to its tenant and version (associated data), so a row read
or moved across tenants unwraps to nothing.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "blob_data_keys",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("kek_id", sa.String(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "version", name="pk_blob_data_keys"),
    )
    op.create_table(
        "blob_key_shreds",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_blob_key_shreds"),
    )


def downgrade() -> None:
    op.drop_table("blob_key_shreds")
    op.drop_table("blob_data_keys")
