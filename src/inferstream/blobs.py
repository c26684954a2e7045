"""Blob store for the claim check: large payloads live outside the bus.

A payload larger than the threshold is written to the blob store under its
SHA-256 (content addressed, so a redelivery writes nothing new) and the envelope
carries a :class:`BlobRef` with the URI and checksum instead of the bytes.
``file:///path`` is a local folder, the default; other schemes can be added to
``open_blob_store``.

Every blob belongs to one tenant: it is written and read under that tenant's
prefix, and a read names the tenant. A digest alone never reaches another
tenant's bytes, even when a client learns it (content addressing across tenants
would otherwise let a digest stand for a read permission).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from inferstream.envelope import BlobRef, Envelope
from inferstream.errors import BlobError, ConfigError

DEFAULT_THRESHOLD = 256 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Tenants become folder names: no dots or slashes, so never a path outside the root.
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class BlobStore(Protocol):
    url: str

    def put(self, data: bytes, tenant: str) -> BlobRef: ...

    def get(self, ref: BlobRef, tenant: str) -> bytes: ...


class LocalBlobStore:
    """Blobs as files in a folder: one folder per tenant, then fan-out by hash prefix."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.resolve().as_uri()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str, tenant: str) -> Path:
        # Digest and tenant come from messages: only safe names may become a path.
        if not _SHA256.fullmatch(digest):
            raise BlobError(f"blob reference {digest[:80]!r} is not a SHA-256 hex digest")
        if not _TENANT.fullmatch(tenant):
            raise BlobError(f"tenant {tenant[:80]!r} cannot own blobs; it is not a plain name")
        return self.root / tenant / digest[:2] / digest

    def put(self, data: bytes, tenant: str) -> BlobRef:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest, tenant)
        if not _has_size(path, len(data)):
            self._write(path, data)
        uri = f"{self.url}/{tenant}/{digest[:2]}/{digest}"
        return BlobRef(uri=uri, sha256=digest, size=len(data))

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """Write then rename: a crash of any process leaves the blob whole or absent.

        No fsync, the same durability as the embedded bus (SQLite WAL with
        ``synchronous=NORMAL``): everything survives a process crash, a power loss may
        lose the last writes. A blob left torn by one (wrong size) is rewritten by the
        next :meth:`put` of the same bytes.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise BlobError(f"could not write blob to {path}: {exc}") from exc

    def get(self, ref: BlobRef, tenant: str) -> bytes:
        """``tenant``'s blob ``ref``; the path comes from the digest, never the URI."""
        path = self._path(ref.sha256, tenant)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BlobError(f"blob {ref.uri} is missing from {self.root}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BlobError(f"blob {ref.uri} does not match its checksum; it is corrupt")
        return data


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def open_blob_store(url: str) -> BlobStore:
    """Open the blob store ``url`` names; ``file:///abs/path`` or ``file://./rel/path``."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise ConfigError(f"unknown blob store URL {url!r}; use file:///path/to/folder")
    return LocalBlobStore(Path(parts.netloc + parts.path))


def check_in(env: Envelope, store: BlobStore, threshold: int = DEFAULT_THRESHOLD) -> Envelope:
    """Move an inline payload above ``threshold`` bytes into ``store`` (in place)."""
    if env.payload.WhichOneof("body") == "inline" and len(env.payload.inline) > threshold:
        env.payload.blob.CopyFrom(store.put(env.payload.inline, env.tenant))
    return env


def payload_bytes(env: Envelope, store: BlobStore | None) -> bytes:
    """The payload bytes, fetched from ``store`` when the envelope carries a claim check."""
    body = env.payload.WhichOneof("body")
    if body == "inline":
        return env.payload.inline
    if body == "blob":
        if store is None:
            raise BlobError(
                f"envelope {env.id} carries blob {env.payload.blob.uri} but no blob store "
                "is configured; set 'blobs:' in the pipeline file"
            )
        return store.get(env.payload.blob, env.tenant)
    raise BlobError(f"envelope {env.id} has a {body or 'missing'} payload, expected bytes")
