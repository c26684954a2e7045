"""Sharing grants: an owner tenant lets another tenant read a slice of its records.

``share_grants`` holds one row per grant (owner, grantee, application, an optional
window on the record's event time, whether images may be read, which attributes are
masked, expiry, who made it, when it was revoked); ``share_conditions`` the grant's
conditions on declared attributes (a number range, a text range; equality is a range
of one value). Both carry owner and grantee: on PostgreSQL either tenant may read a
grant, only its owner may write or delete it.

A second, read-only policy on ``records`` admits rows a live grant covers for the
transaction's tenant (through ``share_covers``, a function run as the tables' owner);
permissive policies are OR-ed, so the tenant's own rows stay as they were and every
write is still checked by ``tenant_isolation`` alone. A
policy on ``predictions`` admits the predictions of any record the tenant may read.
``inferstream.store.sharing`` writes the same predicate for SQLite's WHERE clauses.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

_TENANT = "current_setting('inferstream.tenant', true)"
_VALUE = "(record_attributes ->> k.attribute)"
_TYPE = "json_typeof(record_attributes -> k.attribute)"
# A condition that cannot be evaluated (missing attribute, wrong type) is false, never
# NULL: NOT EXISTS over NOT (NULL) would admit the row.
_HOLDS = (
    f"coalesce(CASE WHEN k.kind = 'number' THEN {_TYPE} = 'number' AND "
    f"(CASE WHEN {_TYPE} = 'number' THEN {_VALUE}::float8 END) "
    "BETWEEN coalesce(k.low_number, '-Infinity') AND coalesce(k.high_number, 'Infinity') "
    f"ELSE {_TYPE} = 'string' AND {_VALUE} COLLATE \"C\" >= coalesce(k.low_text, '') "
    f'AND (k.high_text IS NULL OR {_VALUE} COLLATE "C" <= k.high_text) END, false)'
)
_COVERED = (
    "SELECT EXISTS (SELECT 1 FROM share_grants g "
    f"WHERE g.grantee = {_TENANT} AND g.owner = record_tenant AND g.app = record_app "
    "AND g.revoked_at_us IS NULL "
    "AND g.expires_at_us > (extract(epoch FROM now()) * 1000000)::bigint "
    "AND (g.since_us IS NULL OR record_created_at_us >= g.since_us) "
    "AND (g.until_us IS NULL OR record_created_at_us < g.until_us) "
    "AND NOT EXISTS (SELECT 1 FROM share_conditions k "
    f"WHERE k.grant_id = g.id AND NOT {_HOLDS}))"
)


def upgrade() -> None:
    op.create_table(
        "share_grants",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("grantee", sa.String(), nullable=False),
        sa.Column("app", sa.String(), nullable=False),
        sa.Column("since_us", sa.BigInteger()),
        sa.Column("until_us", sa.BigInteger()),
        sa.Column("images", sa.Boolean(), nullable=False),
        sa.Column("masked", sa.JSON(), nullable=False),
        sa.Column("expires_at_us", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger()),
        sa.Column("revoked_by", sa.String()),
        sa.PrimaryKeyConstraint("id", name="pk_share_grants"),
    )
    op.create_index(
        "ix_share_grants_grantee_owner_app", "share_grants", ["grantee", "owner", "app"]
    )
    op.create_index("ix_share_grants_owner", "share_grants", ["owner"])
    op.create_table(
        "share_conditions",
        sa.Column("grant_id", sa.String(), nullable=False),
        sa.Column("attribute", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("grantee", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("low_number", sa.Float()),
        sa.Column("high_number", sa.Float()),
        sa.Column("low_text", sa.String()),
        sa.Column("high_text", sa.String()),
        sa.PrimaryKeyConstraint("grant_id", "attribute", name="pk_share_conditions"),
    )
    if op.get_bind().dialect.name == "postgresql":
        _row_level_security()


def _row_level_security() -> None:
    for table in ("share_grants", "share_conditions"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        # Both parties read a grant; only its owner writes (or deletes) it.
        op.execute(
            f"CREATE POLICY share_read ON {table} FOR SELECT "
            f"USING (owner = {_TENANT} OR grantee = {_TENANT})"
        )
        op.execute(
            f"CREATE POLICY share_write ON {table} "
            f"USING (owner = {_TENANT}) WITH CHECK (owner = {_TENANT})"
        )
    # The policy asks a function that runs as the tables' owner (SECURITY DEFINER), so a
    # role that may read records needs no privilege on the grant tables: the function
    # itself names the grantee. PostgreSQL (15) ORs permissive policies in reverse name
    # order: "shared_read" after "tenant_isolation", so a tenant's own rows never call
    # it (EXPLAIN shows the order; tests/store/test_store_sharing.py checks it).
    schema = op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one()
    quoted = op.get_bind().dialect.identifier_preparer.quote(schema)
    op.execute(
        "CREATE FUNCTION share_covers(record_tenant text, record_app text, "
        "record_created_at_us bigint, record_attributes json) RETURNS boolean "
        f"LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, {quoted} "
        f"AS $$ {_COVERED} $$"
    )
    op.execute(
        "CREATE POLICY shared_read ON records FOR SELECT "
        "USING (share_covers(tenant, app, created_at_us, attributes))"
    )
    op.execute(
        "CREATE POLICY shared_read ON predictions FOR SELECT USING (EXISTS (SELECT 1 "
        "FROM records r WHERE r.tenant = predictions.tenant AND r.id = predictions.record_id))"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP POLICY IF EXISTS shared_read ON predictions")
        op.execute("DROP POLICY IF EXISTS shared_read ON records")
        op.execute("DROP FUNCTION IF EXISTS share_covers(text, text, bigint, json)")
    op.drop_table("share_conditions")
    op.drop_table("share_grants")
