"""The audit log: per-tenant hash chains of entries, and their heads.

``audit_log`` is append-only: triggers refuse UPDATE and DELETE (and TRUNCATE on
PostgreSQL) for every role, owners included; a database admin must drop or disable them
first, which the hash chain then shows. On PostgreSQL both tables are under the same
row-level security as the other per-tenant tables.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

TABLES = ("audit_log", "audit_heads")
_REFUSE = "the audit log is append-only: entries are never changed or removed"


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("actor_kind", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("trace_id", sa.String(), nullable=False),
        sa.Column("prev_hash", sa.String(), nullable=False),
        sa.Column("hash", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "seq", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_tenant_at_us", "audit_log", ["tenant", "at_us"])
    op.create_table(
        "audit_heads",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(), nullable=False),
        sa.Column("mac", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_audit_heads"),
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgres_rules()
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{event.lower()} BEFORE {event} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, '{_REFUSE}'); END"
            )


def _postgres_rules() -> None:
    op.execute(
        "CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN RAISE EXCEPTION '{_REFUSE}'; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_refuse()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse()"
    )
    for table in TABLES:
        # Same policy as v0002: FORCE binds the owner too; no tenant named sees nothing.
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            "USING (tenant = coalesce(current_setting('inferstream.tenant', true), '')) "
            "WITH CHECK (tenant = coalesce(current_setting('inferstream.tenant', true), ''))"
        )


def downgrade() -> None:
    op.drop_table("audit_heads")
    op.drop_table("audit_log")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_log_refuse()")
