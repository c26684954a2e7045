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

The DEKs are made, cached, rotated and shredded by
:class:`~inferstream.store.data_keys.DataKeys` (the sensitive attributes of records use
the same keys). ``docs/encryption.md`` has the whole model, rotation and shredding.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag

from inferstream.blobs import PLAIN, SEALED_MAGIC, BlobStore, open_blob_store
from inferstream.errors import BlobError
from inferstream.key_provider import KeyProvider, key_provider_from_env
from inferstream.store.data_keys import CACHE_ENV, CACHE_S, DataKeys, TenantKeys, data_keys
from inferstream.store.store import ResultsStore

FORMAT_VERSION = 1
#: magic, format, DEK version, nonce.
HEADER = struct.Struct(">4sBI12s")
TAG_BYTES = 16
NONCE_BYTES = 12


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


def _bound(header: bytes, tenant: str, key: str) -> bytes:
    return header + tenant.encode() + b"\0" + key.encode()


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


#: CACHE_*, DataKeys, TenantKeys and data_keys live in inferstream.store.data_keys (record
#: attributes use the same keys) and are named here too, where they were first.
__all__ = [
    "CACHE_ENV",
    "CACHE_S",
    "BlobCipher",
    "DataKeys",
    "TenantKeys",
    "data_keys",
    "open_blobs",
]
