"""Erasing one subject of a tenant: its records, predictions, feedback, dead letters,
accepted scans and the blobs only they referred to, with an audit entry, at once.

A *subject* is what the application's subject attribute names (the thing a record is
about, as the application declares it): the ``subject`` column of ``records``,
``feedback`` and ``scans``. Erasing it removes, for one tenant and every application:

- the records whose ``subject`` is it, and every prediction of those records;
- its feedback (every head);
- the scans the API accepted for it (``scans.subject``);
- the dead letters of the ingested items it came from (the roots of its records and
  its scans: a dead letter concerns the whole item, which carried the subject's data);
- the content-addressed blobs those rows name (``scans.blob_sha256``, and attribute
  values of its records that are a SHA-256 or a ``<tenant>/<dd>/<sha256>`` path),
  unless another row of the tenant still names them.

All of it, and the audit entry saying what was erased, is one transaction bound to the
tenant (row-level security on PostgreSQL). The blobs are deleted inside it, before it
commits: when the blob store fails, nothing is erased and the erasure can be run again;
when the commit fails after the blobs went, running again erases the rows. A blob that a
put wrote or refreshed after the erasure began is kept (a new record may need it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, TypedDict

from sqlalchemy import Connection, Text, cast, delete, or_, select

from inferstream.blobs import BlobStore
from inferstream.envelope import now_us
from inferstream.errors import InferstreamError
from inferstream.store.audit import AuditEntry, AuditLog, target_of
from inferstream.store.schema import dead_letters, feedback, predictions, records, scans

#: Ids bound in one IN list (SQLite allows 32766 parameters; PostgreSQL 65535).
CHUNK = 500
#: The audit action of an erasure.
ACTION = "erase subject"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class SubjectNotFound(InferstreamError):
    """The tenant holds nothing of the subject (never had it, or it is erased already)."""


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked for an erasure, for its audit entry. The entry carries no request id:
    the API's own entry of the request has it (one entry per request id, as the
    registry's entries of a change do), and both carry its trace id."""

    actor: str
    kind: str
    role: str
    source: str = "localhost"
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class Erasure:
    """What one erasure removed, counted per table, and what became of its blobs."""

    tenant: str
    subject: str
    records: int = 0
    predictions: int = 0
    feedback: int = 0
    dead_letters: int = 0
    scans: int = 0
    #: Blobs deleted: nothing the tenant keeps names them any more.
    blobs_deleted: int = 0
    #: Blobs not deleted: another record or scan of the tenant names them, a put wrote
    #: them again while the erasure ran, or they were gone already.
    blobs_kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rows(self) -> int:
        return self.records + self.predictions + self.feedback + self.dead_letters + self.scans


class BlobCounts(TypedDict):
    """What became of the blobs a removal's rows named (fields of :class:`Erasure`)."""

    blobs_deleted: int
    blobs_kept: int


@dataclass(frozen=True, slots=True)
class _Found:
    record_ids: list[str]
    roots: set[str]
    digests: set[str]


def erase_subject(
    audit: AuditLog, blobs: BlobStore, tenant: str, subject: str, requester: Requester
) -> Erasure:
    """Erase ``subject`` of ``tenant`` from ``audit``'s store and ``blobs`` (see the
    module's docstring); :class:`SubjectNotFound` when the tenant holds none of it."""
    started_us = now_us()
    with deleting_in(audit, tenant, "erase a subject in") as conn:
        found = _find(conn, tenant, subject)
        erased = _delete_rows(conn, tenant, subject, found)
        if not erased.rows:
            raise SubjectNotFound(f"tenant {tenant!r} holds nothing of subject {subject!r}")
        blob_counts = delete_unnamed_blobs(conn, blobs, tenant, found.digests, started_us)
        done = replace(erased, **blob_counts)
        audit.append_in(conn, tenant, [removal_entry(ACTION, done.to_dict(), requester)])
    return done


@contextmanager
def deleting_in(audit: AuditLog, tenant: str, doing: str) -> Iterator[Connection]:
    """A transaction bound to ``tenant`` that reads what to delete, then deletes it;
    ``doing`` completes its error message ("erase a subject in")."""
    with audit.store.tenant_transaction(tenant, doing) as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # no writer between reading and deleting
        yield conn


def delete_unnamed_blobs(
    conn: Connection, blobs: BlobStore, tenant: str, digests: set[str], started_us: int
) -> BlobCounts:
    """Delete those of ``digests`` that no row of ``tenant`` left after the deletes names
    (and that no put wrote since ``started_us``), counted."""
    unused = digests - still_named(conn, tenant, digests)
    deleted = sum(blobs.delete(d, tenant, unused_since_us=started_us) for d in sorted(unused))
    return BlobCounts(blobs_deleted=deleted, blobs_kept=len(digests) - deleted)


def _find(conn: Connection, tenant: str, subject: str) -> _Found:
    r, s = records.c, scans.c
    mine = conn.execute(
        select(r.id, r.root_id, r.attributes).where(r.tenant == tenant, r.subject == subject)
    ).all()
    accepted = conn.execute(
        select(s.id, s.blob_sha256).where(s.tenant == tenant, s.subject == subject)
    ).all()
    digests = {str(row.blob_sha256) for row in accepted if is_digest(row.blob_sha256)}
    for row in mine:
        digests.update(digests_named(row.attributes, tenant))
    roots = {str(row.root_id) for row in mine} | {str(row.id) for row in accepted}
    return _Found([str(row.id) for row in mine], roots, digests)


def is_digest(value: str) -> bool:
    """Whether ``value`` is a SHA-256 hex digest (a content-addressed blob's name)."""
    return _DIGEST.fullmatch(value) is not None


def digests_named(attributes: Any, tenant: str) -> set[str]:
    """The blobs a record's attributes name: values that are a SHA-256 hex digest, or a
    content-addressed blob's path under the tenant's folder (``<tenant>/<dd>/<sha256>``)."""
    found = set()
    values = attributes.values() if isinstance(attributes, dict) else ()
    for value in values:
        if not isinstance(value, str):
            continue
        digest = value.rsplit("/", 1)[-1]
        if _DIGEST.fullmatch(digest) and value in (digest, f"{tenant}/{digest[:2]}/{digest}"):
            found.add(digest)
    return found


def _delete_rows(conn: Connection, tenant: str, subject: str, found: _Found) -> Erasure:
    p, d = predictions.c, dead_letters.c
    counts = {
        "predictions": sum(
            deleted_rows(conn, delete(predictions).where(p.tenant == tenant, p.record_id.in_(ids)))
            for ids in chunks(found.record_ids)
        ),
        "dead_letters": sum(
            deleted_rows(conn, delete(dead_letters).where(d.tenant == tenant, d.root_id.in_(ids)))
            for ids in chunks(sorted(found.roots))
        ),
    }
    for table in (records, feedback, scans):
        c = table.c
        counts[table.name] = deleted_rows(
            conn, delete(table).where(c.tenant == tenant, c.subject == subject)
        )
    return Erasure(tenant, subject, **counts)


def still_named(conn: Connection, tenant: str, digests: set[str]) -> set[str]:
    """Which of ``digests`` a row of ``tenant`` left after the deletes still names."""
    named: set[str] = set()
    for chunk in chunks(sorted(digests)):
        s, r = scans.c, records.c
        query = select(s.blob_sha256).where(s.tenant == tenant, s.blob_sha256.in_(chunk))
        named.update(str(digest) for digest in conn.execute(query).scalars())
        # Rows that mention a digest anywhere in their attributes; digests_named decides.
        text = cast(r.attributes, Text)
        mentions = or_(*(text.contains(digest) for digest in chunk))
        query = select(r.attributes).where(r.tenant == tenant, mentions)
        for attributes in conn.execute(query).scalars():
            named.update(digests_named(attributes, tenant) & set(chunk))
    return named


def deleted_rows(conn: Connection, statement: Any) -> int:
    return int(conn.execute(statement).rowcount)


def chunks(items: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])


def removal_entry(action: str, removed: dict[str, Any], requester: Requester) -> AuditEntry:
    """The audit entry of a removal (``removed``: an :class:`Erasure`'s or an expiry's
    ``to_dict()``), in its tenant's chain, counting what went."""
    counts = {name: value for name, value in removed.items() if name != "tenant"}
    return audit_entry(removed["tenant"], action, counts, requester)


def audit_entry(
    tenant: str, action: str, target: dict[str, Any], requester: Requester
) -> AuditEntry:
    """An entry of ``requester``'s change in ``tenant``'s chain: ``action`` on ``target``."""
    return AuditEntry(
        tenant=tenant, at_us=now_us(), actor=requester.actor, actor_kind=requester.kind,
        role=requester.role, action=action, target=target_of(target), source=requester.source,
        status=200, trace_id=requester.trace_id,
    )  # fmt: skip
