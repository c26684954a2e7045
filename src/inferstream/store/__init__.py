"""The results store: where pipeline results land and the API reads them.

Reading guide:

- :mod:`~inferstream.store.store` — :class:`ResultsStore`: batch upserts and the
  tenant-scoped queries (get, list with filters and cursors, group summary,
  dead letters, feedback, accuracy per model version).
- :mod:`~inferstream.store.rows` — the values going in and out.
- :mod:`~inferstream.store.schema` — the tables (SQLAlchemy Core).
- :mod:`~inferstream.store.queries` — the SQL statements and cursor encoding.
- :mod:`~inferstream.store.engine` — URL -> engine (SQLite WAL, psycopg 3).
- :mod:`~inferstream.store.migrate` and ``migrations/`` — Alembic, run from code.
- :mod:`~inferstream.store.step` — the ``store_results`` sink step.
- :mod:`~inferstream.store.audit` — the audit log: per-tenant hash chains, verify.
- :mod:`~inferstream.store.blob_keys` — the wrapped data keys of encrypted blobs.
- :mod:`~inferstream.store.data_keys` — those keys made, unwrapped, rotated, shredded.
- :mod:`~inferstream.store.sealed_attributes` — applications' sensitive attributes,
  sealed under the same keys.
- :mod:`~inferstream.store.share_rules` and :mod:`~inferstream.store.sharing` — sharing
  grants: what one admits, making and revoking them, reads through them.
- :mod:`~inferstream.store.erasure` — erasing one subject of a tenant, audited.
- :mod:`~inferstream.store.retention` — a tenant's retention: results before a cutoff,
  and the stored per-tenant policies housekeeping applies.

Adding a migration (e.g. the API's ``users``, ``api_keys`` and ``tenants``):

1. Add ``migrations/versions/v0002_<what>.py`` with ``revision = "0002"`` and
   ``down_revision = "0001"`` (the current head; see :func:`migrate.head_revision`),
   and ``upgrade()``/``downgrade()`` written with ``alembic.op``. Migrations are
   frozen history: write the tables out in the file, never import ``schema``.
2. Declare the same tables in :mod:`schema` (or in your own module on
   ``schema.metadata``) so queries and the schema-drift test see them.
3. A per-tenant table needs a ``tenant`` column, indexes that start with it, and
   on PostgreSQL the same ``ENABLE``/``FORCE ROW LEVEL SECURITY`` + policy as in
   ``v0001_results.py`` (skip it for tables that span tenants, like ``tenants``).
4. Nothing else: ``ResultsStore(url)`` (or ``.migrate()``) upgrades every
   database to the new head on open, under a lock, so many workers may start at once.

Timestamps are integers, microseconds since the Unix epoch (UTC), as in envelopes.
"""

from __future__ import annotations

from inferstream.store.queries import InvalidQuery
from inferstream.store.rows import (
    DeadLetterRow,
    Feedback,
    GroupSummary,
    ModelAccuracy,
    Page,
    PredictionRow,
    ResultFilter,
    ResultRow,
)
from inferstream.store.step import StoreStep, store_step
from inferstream.store.store import RejectedWrite, ResultsStore

__all__ = [
    "DeadLetterRow",
    "Feedback",
    "GroupSummary",
    "InvalidQuery",
    "ModelAccuracy",
    "Page",
    "PredictionRow",
    "RejectedWrite",
    "ResultFilter",
    "ResultRow",
    "ResultsStore",
    "StoreStep",
    "store_step",
]
