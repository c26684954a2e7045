"""The tenants' data keys: made, unwrapped and cached, rotated, rewrapped and shredded.

Each tenant has data keys (DEKs, AES-256) numbered 1, 2, ...; the newest seals new
data, every one still opens what it sealed. They are kept in the results store's
database (:mod:`inferstream.store.blob_keys`) only wrapped by a key-encryption key of a
:class:`~inferstream.key_provider.KeyProvider`. Both what is encrypted at rest use them:
blobs (:mod:`inferstream.blob_crypto`) and the sensitive attributes of records
(:mod:`inferstream.store.sealed_attributes`).

Unwrapped DEKs are cached for :data:`CACHE_S` seconds per process
(``INFERSTREAM_KEY_CACHE_S``), so a shred or a new DEK made by another process is seen
within that time; the process that makes it sees it at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from inferstream.envelope import now_us
from inferstream.errors import BlobError, ConfigError, TenantShredded
from inferstream.key_provider import KeyProvider, WrappedKey
from inferstream.store.blob_keys import BlobKeyTable, KeyStore, StoredDataKey

#: How long a process uses a DEK (and which one is newest) before reading its row again.
CACHE_S = 30.0
#: Overrides :data:`CACHE_S` (seconds; 0 reads the key's row for every use).
CACHE_ENV = "INFERSTREAM_KEY_CACHE_S"


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """A tenant's data keys as ``inferstream keys status`` shows them."""

    tenant: str
    versions: tuple[int, ...]
    kek_ids: tuple[str, ...]
    newest_created_us: int


class DataKeys:
    """The tenants' DEKs of one store: made on a tenant's first sealed blob or
    attribute, unwrapped on demand and cached, rotated, rewrapped and shredded."""

    def __init__(
        self,
        table: BlobKeyTable,
        provider: KeyProvider,
        *,
        cache_s: float = CACHE_S,
        clock: Callable[[], float] = time.monotonic,
        made_at_us: Callable[[], int] = now_us,
    ) -> None:
        self.table = table
        self.provider = provider
        self._cache_s = cache_s
        self._clock = clock
        #: The wall clock a new key's age is counted from (housekeeping replaces old ones).
        self._made_at_us = made_at_us
        self._ciphers: dict[tuple[str, int], tuple[AESGCM, float]] = {}
        self._newest: dict[str, tuple[int, float]] = {}

    def sealing_key(self, tenant: str) -> tuple[int, AESGCM]:
        """The tenant's newest DEK (made now if it has none) and its version."""
        cached = self._newest.get(tenant)
        if cached is not None and cached[1] > self._clock():
            return cached[0], self.opening_key(tenant, cached[0])
        stored = self.table.newest(tenant)
        if stored is None:
            self._create(tenant, 1)  # another process may win: its key is the one
            stored = self.table.newest(tenant)
        if stored is None:
            raise self._missing(tenant, 1)
        self._newest[tenant] = (stored.version, self._clock() + self._cache_s)
        return stored.version, self._remember(stored)

    def opening_key(self, tenant: str, version: int) -> AESGCM:
        """The tenant's DEK ``version``, which sealed the blob being read."""
        cached = self._ciphers.get((tenant, version))
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        stored = self.table.get(tenant, version)
        if stored is None:
            raise self._missing(tenant, version)
        return self._remember(stored)

    def new_data_key(self, tenant: str) -> int:
        """Give ``tenant`` a new DEK for new blobs (old ones keep theirs); its version."""
        newest = self.table.newest(tenant)
        version = newest.version + 1 if newest else 1
        if not self._create(tenant, version):
            if self.table.shred_of(tenant) is not None:
                raise self._missing(tenant, version)
            raise BlobError(
                f"another process made data key {version} of tenant {tenant!r} at the same "
                "time; run the command again if you want one more"
            )
        self._newest.pop(tenant, None)
        return version

    def rewrap_all(self) -> int:
        """Rewrap every tenant's DEKs not wrapped by the provider's current KEK; how
        many. Blobs are not touched: only the wrapping of their keys changes."""
        current, done = self.provider.current_kek_id, 0
        for tenant in self.table.tenants():
            for stored in self.table.of_tenant(tenant):
                if stored.kek_id == current:
                    continue
                key = self._unwrap(stored)
                new = self.provider.wrap(key, _context(stored.tenant, stored.version))
                done += self.table.rewrap(stored, new.kek_id, new.wrapped)
        return done

    def shred(self, tenant: str, actor: str) -> int:
        """Delete every DEK of ``tenant``: its encrypted blobs become unreadable for good.
        How many keys were deleted."""
        deleted = self.table.shred(tenant, now_us(), actor)
        self._newest.pop(tenant, None)
        for cached in [k for k in self._ciphers if k[0] == tenant]:
            del self._ciphers[cached]
        return deleted

    def status(self) -> list[TenantKeys]:
        """Every tenant's DEKs: versions, the KEKs wrapping them, the newest's age."""
        found = []
        for tenant in self.table.tenants():
            keys = self.table.of_tenant(tenant)
            found.append(TenantKeys(
                tenant, tuple(k.version for k in keys), tuple(sorted({k.kek_id for k in keys})),
                max(k.created_us for k in keys),
            ))  # fmt: skip
        return found

    def _create(self, tenant: str, version: int) -> bool:
        wrapped = self.provider.wrap(AESGCM.generate_key(256), _context(tenant, version))
        stored = StoredDataKey(tenant, version, self._made_at_us(), wrapped.kek_id, wrapped.wrapped)
        return self.table.add(stored)

    def _remember(self, stored: StoredDataKey) -> AESGCM:
        cipher = AESGCM(self._unwrap(stored))
        self._ciphers[(stored.tenant, stored.version)] = (cipher, self._clock() + self._cache_s)
        return cipher

    def _unwrap(self, stored: StoredDataKey) -> bytes:
        wrapped = WrappedKey(stored.kek_id, stored.wrapped)
        return self.provider.unwrap(wrapped, _context(stored.tenant, stored.version))

    def _missing(self, tenant: str, version: int) -> BlobError:
        shred = self.table.shred_of(tenant)
        if shred is not None:
            when = datetime.fromtimestamp(shred.at_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M UTC")
            return TenantShredded(
                f"the blob keys of tenant {tenant!r} were shredded on {when} by {shred.actor}: "
                "its encrypted blobs and sensitive record attributes can never be read again, "
                "and none are written for it"
            )
        return BlobError(
            f"data key {version} of tenant {tenant!r} is not in the results store "
            f"({self.table.store.url}); its row was deleted behind inferstream's back: "
            "restore the blob_data_keys table from a backup"
        )


def _context(tenant: str, version: int) -> bytes:
    """What a wrapped DEK is bound to: its tenant and version."""
    # "blob" stays in it: the keys wrapped before attributes used them are bound to it.
    return f"inferstream blob data key\0{tenant}\0{version}".encode()


def data_keys(store: KeyStore, provider: KeyProvider) -> DataKeys:
    """``store``'s data keys under ``provider``, cached as ``INFERSTREAM_KEY_CACHE_S`` says."""
    return DataKeys(BlobKeyTable(store), provider, cache_s=_cache_s())


def _cache_s() -> float:
    setting = os.environ.get(CACHE_ENV, "").strip()
    try:
        seconds = float(setting) if setting else CACHE_S
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise ConfigError(f"{CACHE_ENV}={setting!r} is not a number of seconds from 0 to 3600")
    return seconds


__all__ = ["CACHE_ENV", "CACHE_S", "DataKeys", "TenantKeys", "data_keys"]
