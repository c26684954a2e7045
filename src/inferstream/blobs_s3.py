"""The blob store on S3, or on any server speaking the S3 API: ``s3://bucket/prefix``.

Endpoint, region and credentials come from boto3's own resolution, as for any AWS tool:
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``
and ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role. Blobs lie under the
prefix as in a local store (``<tenant>/<dd>/<sha256>``, ``<tenant>/<key>``), and every
read is checked against the digest.

boto3's errors are translated here: an unreachable server, a 5xx or a request to slow
down is :class:`~inferstream.errors.BlobStoreUnavailable`, a transient error (workers
wait it out, the API answers 503); a missing object or bucket, or a refusal (403), is a
:class:`~inferstream.errors.BlobError` that says what to do.

Retention on S3
---------------
S3 can neither refresh an object's time in place nor rename one, the two things the
local store's retention rests on. So :meth:`S3BlobStore.put` always writes the bytes
(one request; refreshing by a copy onto itself would need a HEAD first): the object's
``LastModified`` is the time of the last put, which is what "unused since" reads. A
purge and a put of the same bytes could still cross: the purge reads an old time, the
put rewrites, the purge deletes what the put wrote. Both sides therefore announce
themselves before they look at the other (Dekker's way), on S3's read-after-write
consistency:

- a purge writes a marker of its own (``.purging/<tenant>/<dd>/<sha256>/<id>`` under
  the prefix, in no tenant's folder), reads the blob's time, deletes the blob if it is
  old, then removes its marker;
- a put writes the blob, then lists the blob's markers: while there is one it waits,
  then writes again; with none, it checks that the blob is still there (a whole purge
  may have passed in between) and writes again if it is not.

Whatever the order the requests land in, either the purge sees the new time and spares
the blob, or the put sees the purge and writes after it; each purge has its own marker,
so purges running at once (two hosts' housekeeping) do not cross either. A put thus
costs three requests (write, list, head). A purge that died keeps its empty marker:
puts ignore a marker older than :data:`MARKER_TTL_S` by the server's clock, and
a purge never sends its delete later than :data:`DELETE_DEADLINE_S` after it began
writing its marker, with a client that gives up on it within ``2 * DELETE_TIMEOUT_S``,
so no delete can land after puts stopped waiting. Times in ``LastModified`` have whole
seconds: a blob counts as used until the end of its second. ``unused_since_us`` comes
from the purging host's clock; retention is hours, so seconds of skew do not matter.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from inferstream.blobs import (
    PLAIN,
    Sealer,
    content_key,
    is_stored_key,
    is_tenant,
    named_key,
    ref_key,
    stored_key,
    verified,
)
from inferstream.envelope import BlobRef
from inferstream.errors import (
    BlobError,
    BlobStoreUnavailable,
    ConfigError,
    InferstreamError,
    MissingExtraError,
)

try:
    import boto3
    import botocore.config
    import botocore.exceptions as aws
except ImportError as exc:
    raise MissingExtraError("boto3", "s3") from exc

#: A purge's marker younger than this (by the server's clock) holds up puts of its blob.
MARKER_TTL_S = 120.0
#: A purge sends its delete no later than this after it began writing its marker...
DELETE_DEADLINE_S = 30.0
#: ...on a client that waits at most this long to connect and to read, and never retries.
DELETE_TIMEOUT_S = 10.0
#: How often a put waiting for a purge looks again.
MARKER_POLL_S = 0.05
#: Where purges put their markers under the prefix: no tenant has that name.
MARKER_FOLDER = ".purging"

US_PER_S = 1_000_000
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: Error codes of an S3 server asking to slow down or to try again (with any 5xx, 429).
_SLOW_DOWN = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded",
     "TooManyRequestsException"}
)  # fmt: skip
#: Error codes of a refusal: wrong, expired or powerless credentials.
_REFUSED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "AllAccessDisabled", "AccountProblem"}
)  # fmt: skip
_CREDENTIALS = (aws.NoCredentialsError, aws.PartialCredentialsError, aws.CredentialRetrievalError)
#: The server could not be reached or the answer was cut: try again later.
_UNREACHABLE = (aws.ConnectionError, aws.HTTPClientError, aws.IncompleteReadError)

log = logging.getLogger(__name__)


class _NoObject(BlobError):
    """The server has no object at the key (a HEAD's 404 or a GET's ``NoSuchKey``)."""


class S3BlobStore:
    """Blobs as objects of one bucket under a prefix; see the module's docstring."""

    #: Reads a step has in flight at once: within boto3's default pool of 10 connections.
    parallel_reads = 8

    def __init__(self, bucket: str, prefix: str = "", sealer: Sealer = PLAIN) -> None:
        root = prefix.strip("/")
        self.bucket = bucket
        self.sealer = sealer
        self.url = f"s3://{bucket}/{root}" if root else f"s3://{bucket}"
        self._root = f"{root}/" if root else ""
        self._client = _client(self.url)
        self._deleter: Any = None  # a purge's client, made by the first purge

    def close(self) -> None:
        """Close the connections (the store is unusable afterwards)."""
        self._client.close()
        if self._deleter is not None:
            self._deleter.close()

    def put(self, data: bytes, tenant: str) -> BlobRef:
        """Keep ``data`` under ``tenant`` (written again when already there, which
        refreshes its time for retention), never lost to a purge running meanwhile."""
        digest = hashlib.sha256(data).hexdigest()
        key = content_key(digest, tenant)
        sealed = self.sealer.seal(data, tenant, key)
        while True:
            self._write(key, sealed)
            if not self._waited_for_purge(key) and self._head(key) is not None:
                return BlobRef(uri=self._uri(key), sha256=digest, size=len(data))

    def put_at(self, key: str, data: bytes, tenant: str) -> BlobRef:
        """Write ``data`` under a name of the caller's (``<tenant>/<key>``), for blobs
        people and other tools look up by path; rewriting a key replaces its bytes."""
        where = named_key(key, tenant)
        self._write(where, self.sealer.seal(data, tenant, where))
        digest = hashlib.sha256(data).hexdigest()
        return BlobRef(uri=self._uri(where), sha256=digest, size=len(data))

    def get(self, ref: BlobRef, tenant: str) -> bytes:
        """``tenant``'s blob ``ref`` (a named blob's key, else its digest's), checked
        against the digest: corrupt bytes are a :class:`BlobError`, never returned."""
        key = ref_key(self.url, ref, tenant)
        with self._boundary("read", self._uri(key)):
            answer = self._client.get_object(Bucket=self.bucket, Key=self._object(key))
            with closing(answer["Body"]) as body:
                data: bytes = body.read()
        return verified(self.sealer.open(data, tenant, key), ref, self._uri(key))

    def delete(self, digest: str, tenant: str, *, unused_since_us: int | None = None) -> bool:
        """Remove ``tenant``'s blob ``digest`` (a retention purge); whether it did. With
        ``unused_since_us``, only if no put wrote it since then, nor writes it meanwhile
        (the module's docstring says how)."""
        key = content_key(digest, tenant)
        if unused_since_us is None:
            found = self._head(key) is not None
            if found:
                self._remove(key, self._client)
            return found
        return self._purge(key, unused_since_us)

    def tenants(self) -> list[str]:
        """Every tenant holding blobs here (a folder of its own under the prefix)."""
        found: set[str] = set()
        with self._boundary("list the tenants of", self.url):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._root, Delimiter="/"
            )
            for page in pages:
                for folder in page.get("CommonPrefixes", ()):
                    found.add(folder["Prefix"][len(self._root) :].rstrip("/"))
        return sorted(name for name in found if is_tenant(name))

    def stored_keys(self) -> Iterator[str]:
        """Every blob's key under the prefix, in key order (S3 lists in that order), a
        page of up to 1,000 per request; purges' markers are no blob's."""
        with self._boundary("list the blobs of", self.url):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._root
            )
            for page in pages:
                keys = (found["Key"][len(self._root) :] for found in page.get("Contents", ()))
                yield from (key for key in keys if is_stored_key(key))

    def read_stored(self, key: str) -> bytes | None:
        """The object at ``key`` as stored (sealed bytes stay sealed), or None if gone."""
        where = stored_key(key)
        try:
            with self._boundary("read", self._uri(where)):
                answer = self._client.get_object(Bucket=self.bucket, Key=self._object(where))
                with closing(answer["Body"]) as body:
                    data: bytes = body.read()
        except _NoObject:
            return None
        return data

    def write_stored(self, key: str, data: bytes) -> None:
        """Write ``data`` as stored at ``key`` (a restore into a deployment that runs no
        purge yet, so no marker is looked for)."""
        self._write(stored_key(key), data)

    # -- retention --------------------------------------------------------------

    def _purge(self, key: str, unused_since_us: int) -> bool:
        marker = f"{MARKER_FOLDER}/{key}/{uuid.uuid4().hex}"
        started = time.monotonic()
        self._write(marker, b"")
        try:
            head = self._head(key)
            if head is None or _modified_us(head) + US_PER_S > unused_since_us:
                return False  # gone already, or put since (in the second it was written)
            if time.monotonic() - started > DELETE_DEADLINE_S:
                return False  # puts may no longer wait for this purge: the next one may
            self._remove(key, self._purge_client())
            return True
        finally:
            self._drop_marker(marker)

    def _waited_for_purge(self, key: str) -> bool:
        """Whether a purge of ``key`` was under way; if so, returns once it is over."""
        waited = False
        while self._purge_under_way(key):
            waited = True
            time.sleep(MARKER_POLL_S)
        return waited

    def _purge_under_way(self, key: str) -> bool:
        """Whether a purge of ``key`` has a marker younger than :data:`MARKER_TTL_S`."""
        folder = self._object(f"{MARKER_FOLDER}/{key}/")
        with self._boundary("look for purges of", self._uri(key)):
            answer = self._client.list_objects_v2(Bucket=self.bucket, Prefix=folder)
        sent = answer["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = parsedate_to_datetime(sent) if sent else datetime.now(UTC)
        ages = [
            (now - marker["LastModified"]).total_seconds() for marker in answer.get("Contents", ())
        ]
        return any(age < MARKER_TTL_S for age in ages)

    def _purge_client(self) -> Any:
        if self._deleter is None:
            self._deleter = _client(self.url, botocore.config.Config(
                connect_timeout=DELETE_TIMEOUT_S, read_timeout=DELETE_TIMEOUT_S,
                retries={"total_max_attempts": 1},
            ))  # fmt: skip
        return self._deleter

    def _drop_marker(self, marker: str) -> None:
        try:
            self._remove(marker, self._client)
        except InferstreamError as exc:  # it expires; meanwhile puts of this blob wait
            log.warning("purge marker %s not removed: %s", self._uri(marker), exc)

    # -- requests ---------------------------------------------------------------

    def _write(self, key: str, data: bytes) -> None:
        with self._boundary("write", self._uri(key)):
            self._client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data)

    def _head(self, key: str) -> Any:
        """The object's HEAD answer, or None when there is no object at ``key``."""
        try:
            with self._boundary("look up", self._uri(key)):
                return self._client.head_object(Bucket=self.bucket, Key=self._object(key))
        except _NoObject:
            return None

    def _remove(self, key: str, client: Any) -> None:
        with self._boundary("delete", self._uri(key)):
            client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def _object(self, key: str) -> str:
        return f"{self._root}{key}"

    def _uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    @contextmanager
    def _boundary(self, what: str, where: str) -> Iterator[None]:
        """boto3's errors inside the block as ours, saying what failed and what to do."""
        try:
            yield
        except aws.ClientError as exc:
            raise _answer_error(exc.response, what, where, self.bucket) from exc
        except aws.BotoCoreError as exc:
            raise _client_error(exc, what, where) from exc


def open_s3_store(url: str, sealer: Sealer = PLAIN) -> S3BlobStore:
    """The store ``s3://bucket/prefix`` names (the prefix may be empty)."""
    parts = urlsplit(url)
    if not _BUCKET.fullmatch(parts.netloc) or parts.query or parts.fragment:
        raise ConfigError(
            f"blob store URL {url!r} names no S3 bucket; use s3://bucket/prefix (endpoint "
            "and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE...)"
        )
    return S3BlobStore(parts.netloc, parts.path, sealer)


def _client(url: str, config: Any = None) -> Any:
    try:
        return boto3.session.Session().client("s3", config=config)
    except (aws.BotoCoreError, ValueError) as exc:
        raise ConfigError(
            f"cannot open blob store {url}: {exc}; check AWS_ENDPOINT_URL, AWS_REGION and "
            "AWS_PROFILE (or ~/.aws/config)"
        ) from exc


def _modified_us(head: Any) -> int:
    return int(head["LastModified"].timestamp() * US_PER_S)


def _answer_error(response: Any, what: str, where: str, bucket: str) -> InferstreamError:
    """The server's error answer as ours."""
    error, meta = response.get("Error", {}), response.get("ResponseMetadata", {})
    code, status = str(error.get("Code", "")), int(meta.get("HTTPStatusCode", 0))
    if status >= 500 or status == 429 or code in _SLOW_DOWN:
        return BlobStoreUnavailable(
            f"cannot {what} {where}: the S3 server answered {status} {code}; retried until "
            "it answers"
        )
    if code == "NoSuchBucket":
        return BlobError(
            f"cannot {what} {where}: bucket {bucket!r} does not exist; create it, or fix "
            "the blobs URL of the pipeline file"
        )
    if status == 404:
        return _NoObject(f"blob {where} is missing: no such object in the bucket")
    if status == 403 or code in _REFUSED:
        return BlobError(
            f"cannot {what} {where}: the S3 server refused ({code}); check the credentials "
            "this process finds (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "an instance role) and that they may read, write, list and delete there"
        )
    return BlobError(f"cannot {what} {where}: {code} ({status}) {error.get('Message', '')}")


def _client_error(exc: Exception, what: str, where: str) -> InferstreamError:
    """An error of boto3's side (no answer, no credentials) as ours."""
    if isinstance(exc, _UNREACHABLE):
        return BlobStoreUnavailable(
            f"cannot {what} {where}: the S3 server is unreachable ({exc}); retried until it answers"
        )
    if isinstance(exc, _CREDENTIALS):
        return BlobError(
            f"cannot {what} {where}: {exc}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE, or run with an instance role"
        )
    return BlobError(f"cannot {what} {where}: {exc}")


__all__ = ["S3BlobStore", "open_s3_store"]
