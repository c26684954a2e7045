"""The one place a transaction is bound to a tenant.

On PostgreSQL every per-tenant table has a row-level-security policy that compares
``tenant`` with the transaction's ``inferstream.tenant`` setting; :func:`name_tenant`
sets it for the current transaction only (``set_config(..., true)``), so a pooled
connection never carries one tenant's setting into another's work. Whatever reads or
writes tenant rows goes through :meth:`inferstream.store.ResultsStore.tenant_transaction`,
which calls this; nothing else sets the tenant. SQLite has no row-level security: the
WHERE clauses carry the tenant there, as they do everywhere.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

_SET_TENANT = text("SELECT set_config('inferstream.tenant', :tenant, true)")


def name_tenant(conn: Connection, tenant: str) -> None:
    """Name ``tenant`` for row-level security, for this transaction only."""
    if conn.dialect.name == "postgresql":
        conn.execute(_SET_TENANT, {"tenant": tenant})
