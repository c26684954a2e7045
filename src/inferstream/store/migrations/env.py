"""Alembic environment for the results store, run programmatically.

:func:`inferstream.store.migrate.upgrade` hands in an open connection (inside a
transaction that already holds the migration lock); there is no ``alembic.ini``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from inferstream.store.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "the results store migrations run through ResultsStore.migrate() or "
        "inferstream.store.migrate.upgrade(), which pass a connection"
    )
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
