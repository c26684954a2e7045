"""Retention of one tenant's results: what was stored before a cutoff is deleted.

:func:`expire` deletes, for one tenant, the records stored before the cutoff and every
prediction of them, the feedback, accepted scans and dead letters recorded before it, and
the blobs those rows named that no row of the tenant left names (the rule of
:mod:`inferstream.store.erasure`), in one transaction bound to the tenant with an audit
entry counting them (none when nothing expired).

A tenant's *policy* (:class:`KeepPolicy`, a row of ``retention_policies``) says how many
days its results are kept; :func:`expire_by_policies` is the pipeline's housekeeping
chore that applies every stored policy. ``inferstream expire`` still runs one expiry by
hand, with any period.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import Connection, delete, select

from inferstream.blobs import BlobStore
from inferstream.envelope import now_us
from inferstream.errors import InvalidInput
from inferstream.store import queries
from inferstream.store.audit import AuditLog
from inferstream.store.erasure import (
    Requester,
    audit_entry,
    chunks,
    delete_unnamed_blobs,
    deleted_rows,
    deleting_in,
    digests_named,
    is_digest,
    removal_entry,
)
from inferstream.store.schema import (
    MAX_KEEP_DAYS,
    dead_letters,
    feedback,
    predictions,
    records,
    retention_policies,
    scans,
)
from inferstream.store.store import ResultsStore

#: The audit action of an expiry.
ACTION = "expire records"
#: The audit actions of a stored policy's change.
SET_ACTION, CLEAR_ACTION = "set retention", "clear retention"
#: Microseconds in a day.
DAY_US = 86_400 * 1_000_000
#: Who expires results by a stored policy, in the audit entry.
HOUSEKEEPING = Requester("housekeeping", "housekeeping", "operator")


class BadKeepDays(InvalidInput):
    """A policy's days out of range (1 to :data:`MAX_KEEP_DAYS`)."""


@dataclass(frozen=True, slots=True)
class KeepPolicy:
    """A tenant's stored retention: its results are kept ``keep_days`` days."""

    tenant: str
    keep_days: int
    set_by: str
    set_at_us: int

    def cutoff_us(self, at_us: int) -> int:
        """What was stored before this moment has expired at ``at_us``."""
        return at_us - self.keep_days * DAY_US

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    with deleting_in(audit, tenant, "expire results in") as conn:
        gone, digests = _delete_rows(conn, tenant, before_us)
        if not gone.rows:
            return gone
        done = replace(gone, **delete_unnamed_blobs(conn, blobs, tenant, digests, started_us))
        audit.append_in(conn, tenant, [removal_entry(ACTION, done.to_dict(), requester)])
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


# -- stored policies ------------------------------------------------------------


def set_policy(audit: AuditLog, tenant: str, keep_days: int, requester: Requester) -> KeepPolicy:
    """Keep ``tenant``'s results ``keep_days`` days from now on (replacing its policy),
    with an audit entry in the same transaction."""
    whole = isinstance(keep_days, int) and not isinstance(keep_days, bool)
    if not (whole and 1 <= keep_days <= MAX_KEEP_DAYS):
        raise BadKeepDays(f"keep_days must be a whole number from 1 to {MAX_KEEP_DAYS}, "
                          f"got {keep_days!r}")  # fmt: skip
    policy = KeepPolicy(tenant, keep_days, requester.actor, now_us())
    with audit.store.tenant_transaction(tenant, "store a retention policy in") as conn:
        conn.execute(queries.upsert(retention_policies, conn.dialect.name, "update"),
                     [policy.to_dict()])  # fmt: skip
        entry = audit_entry(tenant, SET_ACTION, {"keep_days": keep_days}, requester)
        audit.append_in(conn, tenant, [entry])
    return policy


def get_policy(store: ResultsStore, tenant: str) -> KeepPolicy | None:
    """``tenant``'s policy; None when it has none (its results are kept)."""
    with store.tenant_transaction(tenant, "read a retention policy from") as conn:
        return _policy_in(conn, tenant)


def clear_policy(audit: AuditLog, tenant: str, requester: Requester) -> KeepPolicy | None:
    """Remove ``tenant``'s policy (its results are kept from now on), with an audit
    entry in the same transaction; the policy removed, None when it had none (no entry)."""
    p = retention_policies.c
    with audit.store.tenant_transaction(tenant, "remove a retention policy from") as conn:
        found = _policy_in(conn, tenant)
        if found is not None:
            conn.execute(delete(retention_policies).where(p.tenant == tenant))
            entry = audit_entry(tenant, CLEAR_ACTION, {"keep_days": found.keep_days}, requester)
            audit.append_in(conn, tenant, [entry])
    return found


def list_policies(store: ResultsStore) -> list[KeepPolicy]:
    """The policies of every tenant the store knows (its ``tenants``), each read in a
    transaction bound to its tenant, as row-level security asks on PostgreSQL."""
    found = (get_policy(store, tenant) for tenant in store.tenant_names())
    return [policy for policy in found if policy is not None]


def _policy_in(conn: Connection, tenant: str) -> KeepPolicy | None:
    p = retention_policies.c
    row = conn.execute(select(retention_policies).where(p.tenant == tenant)).mappings().first()
    return None if row is None else KeepPolicy(**row)


# -- the housekeeping chore -----------------------------------------------------


def expire_by_policies(
    audit: AuditLog, blobs: BlobStore, policies: Iterable[KeepPolicy], at_us: int
) -> Iterator[tuple[KeepPolicy, Expiry]]:
    """Expire each tenant's results by its policy, as of ``at_us``: one :func:`expire`
    (one transaction, its audit entry by ``housekeeping``) per policy; yields every
    policy with its expiry, those that deleted nothing too."""
    for policy in policies:
        yield policy, expire(audit, blobs, policy.tenant, policy.cutoff_us(at_us), HOUSEKEEPING)


def shortest_keep_s(policies: Iterable[KeepPolicy]) -> float | None:
    """The shortest of ``policies``, in seconds; None when there are none. Topics are
    shared by every tenant, so none keeps a message longer than this."""
    days = [policy.keep_days for policy in policies]
    return min(days) * 86_400.0 if days else None
