"""The wrapped data keys of encrypted blobs, in the results store's database.

Each tenant has data keys numbered 1, 2, ... (the newest seals new blobs; every one
still opens the blobs it sealed), kept only wrapped: the KEK that unwraps them never
reaches the database. Shredding a tenant deletes its keys and remembers that it was
shredded, so a read of its blobs can say why it fails. The keys serve blobs
(:mod:`inferstream.blob_crypto`) and sensitive record attributes
(:mod:`inferstream.store.sealed_attributes`) alike; :mod:`inferstream.store.data_keys`
wraps and unwraps them. This module only reads and writes rows.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Select, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from inferstream.store.schema import blob_data_keys, blob_key_shreds


class KeyStore(Protocol):
    """What the key table needs of a :class:`~inferstream.store.store.ResultsStore`
    (named by its shape, since the store itself seals attributes with these keys)."""

    @property
    def url(self) -> str: ...

    def tenant_transaction(self, tenant: str, action: str) -> AbstractContextManager[Connection]:
        """A transaction bound to ``tenant``."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StoredDataKey:
    tenant: str
    version: int
    created_us: int
    kek_id: str
    wrapped: bytes


@dataclass(frozen=True, slots=True)
class Shred:
    tenant: str
    at_us: int
    actor: str


class BlobKeyTable:
    """The ``blob_data_keys`` and ``blob_key_shreds`` tables of one results store."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def newest(self, tenant: str) -> StoredDataKey | None:
        query = (
            select(blob_data_keys)
            .where(blob_data_keys.c.tenant == tenant)
            .order_by(blob_data_keys.c.version.desc())
            .limit(1)
        )
        found = self._read(tenant, query)
        return found[0] if found else None

    def get(self, tenant: str, version: int) -> StoredDataKey | None:
        c = blob_data_keys.c
        query = select(blob_data_keys).where(c.tenant == tenant, c.version == version)
        found = self._read(tenant, query)
        return found[0] if found else None

    def of_tenant(self, tenant: str) -> list[StoredDataKey]:
        query = (
            select(blob_data_keys)
            .where(blob_data_keys.c.tenant == tenant)
            .order_by(blob_data_keys.c.version)
        )
        return self._read(tenant, query)

    def tenants(self) -> list[str]:
        """Every tenant with data keys (the table spans tenants: no row-level security)."""
        query = select(blob_data_keys.c.tenant).distinct().order_by(blob_data_keys.c.tenant)
        with self.store.tenant_transaction("", "list the tenants with data keys in") as conn:
            # "" names no tenant; the table is not under row-level security.
            return [str(name) for name in conn.execute(query).scalars()]

    def add(self, key: StoredDataKey) -> bool:
        """Insert ``key`` unless its tenant already has that version (another process
        made it first) or was shredded; whether it went in."""
        with self.store.tenant_transaction(key.tenant, "add a data key to") as conn:
            if _shred_of(conn, key.tenant) is not None:
                return False
            row = {
                "tenant": key.tenant, "version": key.version, "created_us": key.created_us,
                "kek_id": key.kek_id, "wrapped": key.wrapped,
            }  # fmt: skip
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            # RETURNING, not rowcount: SQLAlchemy reports -1 for a psycopg INSERT's rowcount.
            insert = dialect.insert(blob_data_keys).values(row).on_conflict_do_nothing()
            made = conn.execute(insert.returning(blob_data_keys.c.version)).first()
            return made is not None

    def rewrap(self, old: StoredDataKey, kek_id: str, wrapped: bytes) -> bool:
        """Replace ``old``'s wrapping, unless another process rewrapped it meanwhile."""
        c = blob_data_keys.c
        with self.store.tenant_transaction(old.tenant, "rewrap a data key in") as conn:
            done = conn.execute(
                update(blob_data_keys)
                .where(c.tenant == old.tenant, c.version == old.version, c.kek_id == old.kek_id)
                .values(kek_id=kek_id, wrapped=wrapped)
            )
            return done.rowcount == 1

    def shred(self, tenant: str, at_us: int, actor: str) -> int:
        """Delete every data key of ``tenant`` and remember it was shredded (one
        transaction); how many keys were deleted."""
        with self.store.tenant_transaction(tenant, "shred the data keys of") as conn:
            gone = conn.execute(delete(blob_data_keys).where(blob_data_keys.c.tenant == tenant))
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            row = {"tenant": tenant, "at_us": at_us, "actor": actor}
            conn.execute(dialect.insert(blob_key_shreds).values(row).on_conflict_do_nothing())
            return int(gone.rowcount)

    def shreds(self) -> list[Shred]:
        """Every shredded tenant, oldest shred first."""
        query = select(blob_key_shreds).order_by(blob_key_shreds.c.at_us)
        with self.store.tenant_transaction("", "list the shredded tenants in") as conn:
            rows = conn.execute(query).mappings().all()
        return [Shred(row["tenant"], int(row["at_us"]), row["actor"]) for row in rows]

    def shred_of(self, tenant: str) -> Shred | None:
        with self.store.tenant_transaction(tenant, "read the shredded tenants of") as conn:
            return _shred_of(conn, tenant)

    def _read(self, tenant: str, query: Select[Any]) -> list[StoredDataKey]:
        with self.store.tenant_transaction(tenant, "read the data keys of") as conn:
            rows = conn.execute(query).mappings().all()
        return [StoredDataKey(**dict(row)) for row in rows]


def _shred_of(conn: Connection, tenant: str) -> Shred | None:
    row = conn.execute(
        select(blob_key_shreds).where(blob_key_shreds.c.tenant == tenant)
    ).mappings().first()  # fmt: skip
    return Shred(row["tenant"], int(row["at_us"]), row["actor"]) if row else None
