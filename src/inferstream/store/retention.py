"""Retention of one tenant's results: what was stored before a cutoff is deleted.

:func:`expire` deletes, for one tenant, the records stored before the cutoff and every
prediction of them, the feedback, accepted scans and dead letters recorded before it, and
the blobs those rows named that no row of the tenant left names (the rule of
:mod:`inferstream.store.erasure`), in one transaction bound to the tenant with an audit
entry counting them (none when nothing expired). A tenant's retention is a command run
on a schedule (``inferstream expire FILE TENANT --older-than-days N``, a CronJob): each
tenant its own period.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import Connection, delete, select

from inferstream.blobs import BlobStore
from inferstream.envelope import now_us
from inferstream.store.audit import AuditEntry, AuditLog, target_of
from inferstream.store.erasure import (
    Requester,
    chunks,
    deleted_rows,
    digests_named,
    is_digest,
    still_named,
)
from inferstream.store.schema import dead_letters, feedback, predictions, records, scans

#: The audit action of an expiry.
ACTION = "expire records"


@dataclass(frozen=True, slots=True)
class Expiry:
    """What one expiry deleted, per table, and what became of the blobs."""

    tenant: str
    before_us: int
    records: int = 0
    predictions: int = 0
    feedback: int = 0
    dead_letters: int = 0
    scans: int = 0
    blobs_deleted: int = 0
    blobs_kept: int = 0

    @property
    def rows(self) -> int:
        return self.records + self.predictions + self.feedback + self.dead_letters + self.scans

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expire(
    audit: AuditLog, blobs: BlobStore, tenant: str, before_us: int, requester: Requester
) -> Expiry:
    """Delete ``tenant``'s results stored before ``before_us`` (see the module's docstring)."""
    started_us = now_us()
    with audit.store.tenant_transaction(tenant, "expire results in") as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # no writer between reading and deleting
        gone, digests = _delete_rows(conn, tenant, before_us)
        if not gone.rows:
            return gone
        unused = digests - still_named(conn, tenant, digests)
        deleted = sum(blobs.delete(d, tenant, unused_since_us=started_us) for d in sorted(unused))
        done = replace(gone, blobs_deleted=deleted, blobs_kept=len(digests) - deleted)
        audit.append_in(conn, tenant, [_entry(done, requester)])
    return done


def _delete_rows(conn: Connection, tenant: str, before_us: int) -> tuple[Expiry, set[str]]:
    r, s = records.c, scans.c
    old = conn.execute(
        select(r.id, r.attributes).where(r.tenant == tenant, r.stored_at_us < before_us)
    ).all()
    old_scans = conn.execute(
        select(s.blob_sha256).where(s.tenant == tenant, s.received_at_us < before_us)
    ).scalars()
    digests = {str(digest) for digest in old_scans if is_digest(digest)}
    for row in old:
        digests.update(digests_named(row.attributes, tenant))
    p, d, f = predictions.c, dead_letters.c, feedback.c
    ids = [str(row.id) for row in old]
    counts = {
        "predictions": sum(
            deleted_rows(conn, delete(predictions).where(p.tenant == tenant, p.record_id.in_(ch)))
            for ch in chunks(ids)
        ),
        "records": deleted_rows(
            conn, delete(records).where(r.tenant == tenant, r.stored_at_us < before_us)
        ),
        "feedback": deleted_rows(
            conn, delete(feedback).where(f.tenant == tenant, f.at_us < before_us)
        ),
        "dead_letters": deleted_rows(
            conn, delete(dead_letters).where(d.tenant == tenant, d.at_us < before_us)
        ),
        "scans": deleted_rows(
            conn, delete(scans).where(s.tenant == tenant, s.received_at_us < before_us)
        ),
    }
    return Expiry(tenant, before_us, **counts), digests


def _entry(done: Expiry, requester: Requester) -> AuditEntry:
    counts = {name: value for name, value in done.to_dict().items() if name != "tenant"}
    return AuditEntry(
        tenant=done.tenant, at_us=now_us(), actor=requester.actor, actor_kind=requester.kind,
        role=requester.role, action=ACTION, target=target_of(counts), source=requester.source,
        status=200, trace_id=requester.trace_id,
    )  # fmt: skip
