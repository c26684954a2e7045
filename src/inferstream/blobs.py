"""Blob store for the claim check: large payloads live outside the bus.

A payload larger than the threshold is written to the blob store under its
SHA-256 (content addressed, so a redelivery writes nothing new) and the envelope
carries a :class:`BlobRef` with the URI and checksum instead of the bytes.
``file:///path`` is a local folder, the default; ``s3://bucket/prefix`` a bucket of S3
or of any S3-API server (:mod:`inferstream.blobs_s3`, needs ``inferstream[s3]``).
Both lay blobs out the same way under their root: ``<tenant>/<dd>/<sha256>`` for
content-addressed ones, ``<tenant>/<key>`` for named ones (:func:`content_key`,
:func:`named_key`), and both check the bytes against the digest on every read.

Every blob belongs to one tenant: it is written and read under that tenant's
prefix, and a read names the tenant. A digest alone never reaches another
tenant's bytes, even when a client learns it (content addressing across tenants
would otherwise let a digest stand for a read permission).

A store may seal what it writes (:class:`Sealer`): encryption at rest
(:mod:`inferstream.blob_crypto`) is one, :data:`PLAIN` (bytes as given) the default.
The digest is always the plaintext's: content addressing and the references in
envelopes do not change when a key does, and a read is checked after it is unsealed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from inferstream.envelope import BlobRef, Envelope
from inferstream.errors import BlobError, BlobStoreFullError, ConfigError, InferstreamError

DEFAULT_THRESHOLD = 256 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Tenants become folder names: no dots or slashes, so never a path outside the root.
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
#: A named blob's key: plain segments joined by '/', never '.' or '..' (so never a path
#: outside the tenant's folder).
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}){0,15}")


#: The first bytes of a sealed blob (:mod:`inferstream.blob_crypto`'s header).
SEALED_MAGIC = b"\x89ISE"


class Sealer(Protocol):
    """What a store does to the bytes of a blob between the caller and the disk or
    bucket: ``seal`` before writing, ``open`` after reading, both knowing whose blob it
    is and where it lies (``<tenant>/...``, the key under the store's root)."""

    def seal(self, data: bytes, tenant: str, key: str) -> bytes: ...

    def open(self, stored: bytes, tenant: str, key: str) -> bytes: ...

    def stored_size(self, size: int) -> int:
        """How many bytes a sealed blob of ``size`` bytes takes."""


class PlainSealer:
    """No sealing: blobs are stored as given."""

    def seal(self, data: bytes, tenant: str, key: str) -> bytes:
        return data

    def open(self, stored: bytes, tenant: str, key: str) -> bytes:
        return stored

    def stored_size(self, size: int) -> int:
        return size


PLAIN = PlainSealer()


class BlobStore(Protocol):
    url: str
    #: How many reads a step may have in flight at once (:func:`batch_payloads`): 1 for
    #: a local folder, more for a store that answers over the network.
    parallel_reads: int

    def put(self, data: bytes, tenant: str) -> BlobRef: ...

    def get(self, ref: BlobRef, tenant: str) -> bytes: ...

    def put_at(self, key: str, data: bytes, tenant: str) -> BlobRef: ...

    def delete(self, digest: str, tenant: str, *, unused_since_us: int | None = None) -> bool: ...

    def tenants(self) -> list[str]: ...

    def stored_keys(self) -> Iterator[str]:
        """Every blob's key under the root (``<tenant>/...``), in key order; nothing a
        write or purge in flight leaves (a temporary file, a purge's marker)."""

    def read_stored(self, key: str) -> bytes | None:
        """The bytes at ``key`` as stored (still sealed; a backup copies them so), or
        None when there is no blob there (purged since it was listed)."""

    def write_stored(self, key: str, data: bytes) -> None:
        """Write bytes as stored at ``key`` (a restore; they are not sealed again)."""


class LocalBlobStore:
    """Blobs as files in a folder: one folder per tenant, then fan-out by hash prefix."""

    parallel_reads = 1  # a read takes microseconds: threads would only add their cost

    def __init__(self, root: Path, sealer: Sealer = PLAIN) -> None:
        self.root = root
        self.sealer = sealer
        self.url = root.resolve().as_uri()
        self.root.mkdir(parents=True, exist_ok=True)
        self._folder = os.fspath(root)

    def put(self, data: bytes, tenant: str) -> BlobRef:
        """Keep ``data`` under ``tenant``; bytes already there are not written again, only
        their time refreshed, so a retention purge sees they are in use again."""
        digest = hashlib.sha256(data).hexdigest()
        key = content_key(digest, tenant)
        path = os.path.join(self._folder, key)  # (a str: pathlib's joins cost more here)
        if not _touched(path, self.sealer.stored_size(len(data))):
            self._write(path, self.sealer.seal(data, tenant, key))
        return BlobRef(uri=f"{self.url}/{key}", sha256=digest, size=len(data))

    def put_at(self, key: str, data: bytes, tenant: str) -> BlobRef:
        """Write ``data`` under a name of the caller's (``<tenant>/<key>``), for blobs
        people and other tools look up by path; rewriting a key replaces its bytes."""
        where = named_key(key, tenant)
        self._write(self.root / where, self.sealer.seal(data, tenant, where))
        digest = hashlib.sha256(data).hexdigest()
        return BlobRef(uri=f"{self.url}/{where}", sha256=digest, size=len(data))

    @staticmethod
    def _write(path: str | Path, data: bytes) -> None:
        """Write then rename: a crash of any process leaves the blob whole or absent.

        No fsync, the same durability as the embedded bus (SQLite WAL with
        ``synchronous=NORMAL``): everything survives a process crash, a power loss may
        lose the last writes. A blob left torn by one (wrong size) is rewritten by the
        next :meth:`put` of the same bytes.
        """
        try:
            write_whole(path, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BlobStoreFullError(
                    f"the blob store's disk is full: could not write {path}: {exc}; free "
                    "space on that disk or move the blobs (blobs: in the pipeline "
                    "file) to a bigger disk"
                ) from exc
            raise BlobError(f"could not write blob to {path}: {exc}") from exc

    def get(self, ref: BlobRef, tenant: str) -> bytes:
        """``tenant``'s blob ``ref``: the path comes from the digest, or for a named blob
        from its key under the tenant's folder; the bytes must match the digest."""
        key = ref_key(self.url, ref, tenant)
        path = os.path.join(self._folder, key)
        try:
            with open(path, "rb", buffering=0) as handle:  # one read of the whole file
                data = handle.read()
        except OSError as exc:
            raise BlobError(f"blob {ref.uri} is missing from {self.root}: {exc}") from exc
        return verified(self.sealer.open(data, tenant, key), ref, path)

    def delete(self, digest: str, tenant: str, *, unused_since_us: int | None = None) -> bool:
        """Remove ``tenant``'s blob ``digest`` (a retention purge); whether it did.

        Content addressing means one blob may serve several records: the caller deletes
        only what nothing it keeps refers to, and with ``unused_since_us`` only a blob no
        :meth:`put` has written or refreshed since then, since a put in flight (a new
        record on its way) may need it. The blob is moved aside before its time is read,
        so a put racing the purge either refreshed it first (it is put back) or finds it
        gone and writes it again.
        """
        path = self.root / content_key(digest, tenant)
        doomed = path.with_name(f".purge-{digest}-{uuid.uuid4().hex}")
        try:
            path.rename(doomed)
            if unused_since_us is not None and doomed.stat().st_mtime_ns // 1000 > unused_since_us:
                doomed.replace(path)  # in use again; a put since wrote the same bytes
                return False
            doomed.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BlobError(f"could not delete blob {digest} of {tenant}: {exc}") from exc
        return True

    def tenants(self) -> list[str]:
        """Every tenant holding blobs here (a folder of its own under the root)."""
        try:
            entries = list(self.root.iterdir())
        except OSError as exc:
            raise BlobError(f"cannot list the tenants of blob store {self.root}: {exc}") from exc
        return sorted(e.name for e in entries if e.is_dir() and is_tenant(e.name))

    def stored_keys(self) -> Iterator[str]:
        """Every blob's key under the root, in key order (see :class:`BlobStore`)."""
        for tenant in self.tenants():
            paths = sorted(p for p in (self.root / tenant).rglob("*") if p.is_file())
            keys = (p.relative_to(self.root).as_posix() for p in paths)
            yield from (key for key in keys if is_stored_key(key))

    def read_stored(self, key: str) -> bytes | None:
        path = self.root / stored_key(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BlobError(f"cannot read blob {path}: {exc}") from exc

    def write_stored(self, key: str, data: bytes) -> None:
        self._write(self.root / stored_key(key), data)

    def close(self) -> None:
        """Nothing to release (a folder holds no connection); as an S3 store's."""


def _touched(path: str, size: int) -> bool:
    """Whether ``path`` holds ``size`` bytes, its time refreshed; False when it must be
    written (absent, torn, or taken by a purge between the two)."""
    try:
        if os.stat(path).st_size != size:
            return False
        os.utime(path)
    except OSError:
        return False
    return True


def content_key(digest: str, tenant: str) -> str:
    """Where a content-addressed blob lies under a store's root: ``<tenant>/<dd>/<digest>``.

    Digest and tenant come from messages: only plain names may become a path or key.
    """
    if not _SHA256.fullmatch(digest):
        raise BlobError(f"blob reference {digest[:80]!r} is not a SHA-256 hex digest")
    return f"{_checked_tenant(tenant)}/{digest[:2]}/{digest}"


def named_key(key: str, tenant: str) -> str:
    """Where a named blob lies under a store's root: ``<tenant>/<key>``, never outside."""
    if not _KEY.fullmatch(key) or any(part.strip(".") == "" for part in key.split("/")):
        raise BlobError(f"blob key {key[:80]!r} is not plain '/'-separated names")
    return f"{_checked_tenant(tenant)}/{key}"


def stored_key(key: str) -> str:
    """``key`` if it can be a blob's key under a store's root (``<tenant>/<name>``, the
    layout :func:`content_key` and :func:`named_key` make), else a :class:`BlobError`:
    keys come from listings and backups, and only plain names may become a path."""
    tenant, _, rest = key.partition("/")
    return named_key(rest, tenant)


def is_stored_key(key: str) -> bool:
    """Whether ``key`` is a blob's key (:func:`stored_key`), not a temporary file, a
    purge's marker or anything else under the root."""
    try:
        stored_key(key)
    except BlobError:
        return False
    return True


def ref_key(url: str, ref: BlobRef, tenant: str) -> str:
    """Where ``tenant``'s blob ``ref`` lies under the root of the store at ``url``: a
    named blob's key from its URI when that URI is under the tenant's folder there,
    else the content address of its digest (so a URI never reaches another tenant)."""
    prefix = f"{url}/{tenant}/"
    key = ref.uri[len(prefix) :] if ref.uri.startswith(prefix) else ""
    if key and key != f"{ref.sha256[:2]}/{ref.sha256}":
        return named_key(key, tenant)
    return content_key(ref.sha256, tenant)


def verified(data: bytes, ref: BlobRef, where: str) -> bytes:
    """``data`` read from ``where``, if it matches the digest of ``ref``."""
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        if data.startswith(SEALED_MAGIC):
            raise BlobError(
                f"blob {where} is encrypted and this process has no key to open it; set "
                "INFERSTREAM_KEK (or INFERSTREAM_KEY_PROVIDER) as the writers had it "
                "(docs/encryption.md)"
            )
        raise BlobError(
            f"blob {where} does not match its checksum {ref.sha256[:16]}...; it is corrupt "
            "(changed or truncated behind the store's back): restore it or send the item again"
        )
    return data


def is_tenant(name: str) -> bool:
    """Whether ``name`` can be a tenant's folder: a plain name, no dots or slashes."""
    return _TENANT.fullmatch(name) is not None


def _checked_tenant(tenant: str) -> str:
    if not is_tenant(tenant):
        raise BlobError(f"tenant {tenant[:80]!r} cannot own blobs; it is not a plain name")
    return tenant


def open_local_store(url: str, sealer: Sealer = PLAIN) -> LocalBlobStore:
    """``file:///abs/path`` or ``file://./rel/path``."""
    parts = urlsplit(url)
    return LocalBlobStore(Path(parts.netloc + parts.path), sealer)


#: scheme -> "module:factory"; each factory takes the URL and a :class:`Sealer` and
#: returns a BlobStore. The S3 store's module is imported only for an ``s3://`` URL
#: (it needs boto3).
BACKENDS = {
    "file": "inferstream.blobs:open_local_store",
    "s3": "inferstream.blobs_s3:open_s3_store",
}


def open_blob_store(url: str, sealer: Sealer = PLAIN) -> BlobStore:
    """Open the blob store ``url`` names: ``file:///path/to/folder`` (or
    ``file://./relative``) or ``s3://bucket/prefix``, sealing blobs with ``sealer``
    (:func:`inferstream.blob_crypto.open_blobs` gives it the configured encryption)."""
    target = BACKENDS.get(urlsplit(url).scheme)
    if target is None:
        raise ConfigError(
            f"unknown blob store URL {url!r}; use file:///path/to/folder or s3://bucket/prefix"
        )
    module_name, _, attr = target.partition(":")
    store: BlobStore = getattr(importlib.import_module(module_name), attr)(url, sealer)
    return store


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


def batch_payloads(
    batch: Sequence[Envelope], store: BlobStore | None
) -> Callable[[Envelope], bytes]:
    """:func:`payload_bytes` for the envelopes of ``batch``, with their claim checks
    fetched together first, up to ``store.parallel_reads`` at a time: a store over the
    network answers each read in milliseconds, and one after another a worker would
    spend a batch waiting on them. The function returned gives an envelope's bytes, or
    raises what fetching them raised (a transient error too), when the step asks for
    them: the step handles errors as it did with :func:`payload_bytes`."""
    checks = [env for env in batch if env.payload.WhichOneof("body") == "blob"]
    width = min(len(checks), store.parallel_reads if store is not None else 1)
    if width <= 1:
        return lambda env: payload_bytes(env, store)

    def attempt(env: Envelope) -> bytes | InferstreamError:
        try:
            return payload_bytes(env, store)
        except InferstreamError as exc:
            return exc

    with ThreadPoolExecutor(width, thread_name_prefix="blob-fetch") as pool:
        fetched = dict(zip(map(id, checks), pool.map(attempt, checks), strict=True))

    def payload(env: Envelope) -> bytes:
        found = fetched.get(id(env))
        if found is None:  # inline, or not of this batch
            return payload_bytes(env, store)
        if isinstance(found, InferstreamError):
            raise found
        return found

    return payload


#: A temporary file is made by this open (never one already there), private to its owner
#: (as :func:`tempfile.mkstemp` makes it), and not inherited by child processes.
_TEMPORARY_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def write_whole(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed over it, so the file is
    whole or absent, never torn, whatever stops the write (the temporary file is removed).

    Plain ``os`` calls: every upload over HTTP is kept this way, and with
    :func:`tempfile.mkstemp` and pathlib a flagship scan's ``put`` spent 64 µs of its own
    (user) CPU against 36 (``bench/blob_put_bench.py``), besides the kernel's work.
    """
    where = os.fspath(path)
    tmp, fd = _temporary(os.path.dirname(where))
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, where)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _temporary(folder: str) -> tuple[str, int]:
    """A new temporary file in ``folder``, made with it if missing: path and descriptor.

    Its name is random (64 bits; ``stored_keys`` skips it, as no stored key starts with
    a dot), and the open fails rather than take a file already there.
    """
    tmp = os.path.join(folder, f".tmp-{os.urandom(8).hex()}")
    try:
        return tmp, os.open(tmp, _TEMPORARY_FLAGS, 0o600)
    except FileNotFoundError:  # the folder's first blob
        os.makedirs(folder, exist_ok=True)
        return tmp, os.open(tmp, _TEMPORARY_FLAGS, 0o600)
