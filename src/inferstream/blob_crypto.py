"""Encryption at rest of blobs: envelope encryption with per-tenant data keys.

Each tenant has data keys (DEKs, AES-256), kept in the results store's database only
wrapped by a key-encryption key (KEK) of a :class:`~inferstream.key_provider.KeyProvider`
(``INFERSTREAM_KEK``, or a KMS of one's own). A blob is sealed with its tenant's newest
DEK by AES-GCM and stored as a header and the ciphertext::

    magic "\\x89ISE" (4) | format 1 (1) | DEK version (4, big-endian) | nonce (12) | ciphertext+tag

The associated data is the header, the tenant and the blob's key under the store's
root, so a blob moved to another tenant or key, or a header changed, fails to open.
The blob's digest stays the plaintext's and is checked after opening (``blobs``): the
tag already authenticates the ciphertext, and a digest of the plaintext keeps content
addressing (the same bytes, the same key, whatever the nonce) and the references in
envelopes valid across key changes. Blobs without the header (written before
encryption was switched on) are read as they are, still checked against the digest.

Unwrapped DEKs are cached for :data:`CACHE_S` seconds per process
(``INFERSTREAM_KEY_CACHE_S``), so a shred or a new DEK made by another process is seen
within that time; the process that makes it sees it at once. ``docs/encryption.md``
has the whole model, rotation and shredding.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from inferstream.blobs import PLAIN, SEALED_MAGIC, BlobStore, open_blob_store
from inferstream.envelope import now_us
from inferstream.errors import BlobError, ConfigError, TenantShredded
from inferstream.key_provider import KeyProvider, WrappedKey, key_provider_from_env
from inferstream.store.blob_keys import BlobKeyTable, StoredDataKey
from inferstream.store.store import ResultsStore

FORMAT_VERSION = 1
#: magic, format, DEK version, nonce.
HEADER = struct.Struct(">4sBI12s")
TAG_BYTES = 16
NONCE_BYTES = 12
#: How long a process uses a DEK (and which one is newest) before reading its row again.
CACHE_S = 30.0
#: Overrides :data:`CACHE_S` (seconds; 0 reads the key's row for every blob).
CACHE_ENV = "INFERSTREAM_KEY_CACHE_S"


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """A tenant's data keys as ``inferstream keys status`` shows them."""

    tenant: str
    versions: tuple[int, ...]
    kek_ids: tuple[str, ...]
    newest_created_us: int


class DataKeys:
    """The tenants' DEKs of one store: made on a tenant's first blob, unwrapped on
    demand and cached, rotated, rewrapped and shredded."""

    def __init__(
        self,
        table: BlobKeyTable,
        provider: KeyProvider,
        *,
        cache_s: float = CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.provider = provider
        self._cache_s = cache_s
        self._clock = clock
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
        stored = StoredDataKey(tenant, version, now_us(), wrapped.kek_id, wrapped.wrapped)
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
                "its encrypted blobs can never be read again, and none are written for it"
            )
        return BlobError(
            f"data key {version} of tenant {tenant!r} is not in the results store "
            f"({self.table.store.url}); its row was deleted behind inferstream's back: "
            "restore the blob_data_keys table from a backup"
        )


class BlobCipher:
    """A :class:`~inferstream.blobs.Sealer` that encrypts with the tenant's DEK."""

    def __init__(self, keys: DataKeys) -> None:
        self.keys = keys

    def seal(self, data: bytes, tenant: str, key: str) -> bytes:
        version, cipher = self.keys.sealing_key(tenant)
        header = HEADER.pack(SEALED_MAGIC, FORMAT_VERSION, version, os.urandom(NONCE_BYTES))
        return header + cipher.encrypt(header[-NONCE_BYTES:], data, _bound(header, tenant, key))

    def open(self, stored: bytes, tenant: str, key: str) -> bytes:
        if not stored.startswith(SEALED_MAGIC):
            return stored  # written before encryption was on: the digest check follows
        if len(stored) < HEADER.size + TAG_BYTES:
            raise BlobError(f"encrypted blob {key} is truncated ({len(stored)} bytes)")
        _, form, version, nonce = HEADER.unpack_from(stored)
        if form != FORMAT_VERSION:
            raise BlobError(
                f"blob {key} is encrypted in format {form}, which this release does not "
                f"know (it knows {FORMAT_VERSION}); read it with a newer release"
            )
        cipher = self.keys.opening_key(tenant, version)
        header = stored[: HEADER.size]
        try:
            return cipher.decrypt(nonce, stored[HEADER.size :], _bound(header, tenant, key))
        except InvalidTag as exc:
            raise BlobError(
                f"encrypted blob {key} fails its authentication: it was changed, truncated, "
                "or moved from another tenant or key behind the store's back; restore it or "
                "send the item again"
            ) from exc

    def stored_size(self, size: int) -> int:
        return HEADER.size + size + TAG_BYTES


def _context(tenant: str, version: int) -> bytes:
    """What a wrapped DEK is bound to: its tenant and version."""
    return f"inferstream blob data key\0{tenant}\0{version}".encode()


def _bound(header: bytes, tenant: str, key: str) -> bytes:
    return header + tenant.encode() + b"\0" + key.encode()


def data_keys(store: ResultsStore, provider: KeyProvider) -> DataKeys:
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


def open_blobs(
    url: str, store: ResultsStore | str, provider: KeyProvider | None = None
) -> BlobStore:
    """The blob store at ``url``, encrypting with ``provider`` (by default the one
    configured in the environment: ``INFERSTREAM_KEK``, ``INFERSTREAM_KEY_PROVIDER``),
    its DEKs in ``store``'s database; in the clear when no provider is configured."""
    provider = provider or key_provider_from_env()
    if provider is None:
        return open_blob_store(url, PLAIN)
    results = ResultsStore(store) if isinstance(store, str) else store
    return open_blob_store(url, BlobCipher(data_keys(results, provider)))


__all__ = ["BlobCipher", "DataKeys", "TenantKeys", "data_keys", "open_blobs"]
