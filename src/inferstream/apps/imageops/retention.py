"""Retention of imageops outputs: past it they answer 410 Gone, and their bytes go.

Each output record carries ``expires_at_us``: its job's submission time plus the
``retention_hours`` of the pipeline's ``apply_actions`` step. The routes answer 410
from then on; :func:`purge_expired` (the application's ``housekeeping`` hook, run by
``inferstream up`` every minute and by ``inferstream housekeep``) deletes the blobs
of expired outputs and their uploaded images, keeping any blob a live output still
uses (content addressing shares bytes between jobs) and any blob put within the
retention, which a job still in the queue may need. The records stay: a job's status
keeps saying what it made and that it expired.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from inferstream.apps.imageops import APP
from inferstream.apps.imageops.steps import DEFAULT_RETENTION_HOURS, US_PER_HOUR, parse_retention
from inferstream.blobs import BlobStore, open_blob_store
from inferstream.envelope import now_us
from inferstream.pipeline import PipelineSpec
from inferstream.store import ResultFilter, ResultRow, ResultsStore


@dataclass(frozen=True)
class Purged:
    """What one purge did."""

    tenants: int
    expired_outputs: int
    blobs_deleted: int

    def __str__(self) -> str:
        return (
            f"{self.expired_outputs} expired outputs in {self.tenants} tenants; "
            f"{self.blobs_deleted} blobs deleted"
        )


def retention_hours(spec: PipelineSpec) -> float:
    """The ``retention_hours`` of the pipeline's ``apply_actions`` step (the longest, if
    it has several)."""
    found = [
        parse_retention(step.params.get("retention_hours", DEFAULT_RETENTION_HOURS), stage.name)
        for stage in spec.stages
        for step in stage.steps
        if step.ref == "apply_actions"
    ]
    return max(found, default=DEFAULT_RETENTION_HOURS)


def purge_expired(spec: PipelineSpec, at_us: int | None = None) -> Purged:
    """Delete the blobs of every tenant's expired outputs (the ``housekeeping`` hook)."""
    now = now_us() if at_us is None else at_us
    unused_since = now - int(retention_hours(spec) * US_PER_HOUR)
    blobs = open_blob_store(spec.blobs)
    store = ResultsStore(spec.store, migrate=False)  # its workers and API migrate it
    try:
        tenants = blobs.tenants()
        counts = [_purge_tenant(store, blobs, tenant, now, unused_since) for tenant in tenants]
    finally:
        store.close()
    return Purged(len(tenants), sum(c[0] for c in counts), sum(c[1] for c in counts))


def _purge_tenant(
    store: ResultsStore, blobs: BlobStore, tenant: str, now: int, unused_since: int
) -> tuple[int, int]:
    live: set[str] = set()
    dead: set[str] = set()
    expired = 0
    for row in _outputs(store, tenant):
        digests = {row.attributes.get("sha256"), row.attributes.get("input_sha256")}
        if int(row.attributes.get("expires_at_us", now + 1)) <= now:
            expired += 1
            dead.update(d for d in digests if d)
        else:
            live.update(d for d in digests if d)
    deleted = sum(
        blobs.delete(digest, tenant, unused_since_us=unused_since) for digest in sorted(dead - live)
    )
    return expired, deleted


def _outputs(store: ResultsStore, tenant: str) -> Iterator[ResultRow]:
    cursor: str | None = None
    while True:
        page = store.list_results(tenant, ResultFilter(app=APP.name), cursor, 1000)
        yield from page.items
        cursor = page.next_cursor
        if cursor is None:
            return
