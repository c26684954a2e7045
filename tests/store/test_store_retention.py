"""A tenant's retention on both stores: what was stored before the cutoff goes, by id;
what came after, and every other tenant's, stays; blobs still named stay; audited."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Table, select

from inferstream.api.accounts import Accounts, ScanRecord
from inferstream.blobs import LocalBlobStore
from inferstream.envelope import BlobRef
from inferstream.errors import BlobError
from inferstream.store import DeadLetterRow, ResultRow, ResultsStore
from inferstream.store.audit import AuditLog
from inferstream.store.erasure import Requester
from inferstream.store.retention import ACTION, expire
from inferstream.store.schema import dead_letters, feedback, predictions, records, scans

RowFactory = Callable[..., ResultRow]
WHO = Requester("cli:ops", "cli", "operator")
OLD, NEW, CUTOFF = 1_000, 5_000, 3_000


def _ids(store: ResultsStore, table: Table, tenant: str) -> set[str]:
    column = {"predictions": "record_id", "feedback": "subject"}.get(table.name, "id")
    with store.tenant_transaction(tenant, "read") as conn:
        found = conn.execute(select(table.c[column]).where(table.c.tenant == tenant)).scalars()
        return {str(value) for value in found}


def _seed(
    store: ResultsStore, make_row: RowFactory, tenant: str, blobs: LocalBlobStore
) -> tuple[str, str]:
    a, b = (blobs.put(data, tenant).sha256 for data in (b"old scan", b"shared scan"))
    o1 = make_row(tenant, "o1", stored_at_us=OLD, attributes={"blob_sha256": a})
    o2 = make_row(tenant, "o2", stored_at_us=OLD)
    n1 = make_row(tenant, "n1", stored_at_us=NEW, attributes={"blob_sha256": b})
    shadow = dataclasses.replace(o1.champion(), role="shadow", model_version="2.0.0")
    letters = [DeadLetterRow(f"d{at}", tenant, "classify", "E", "bad", 3, "scans.raw", 0, 1, at)
               for at in (OLD, NEW)]  # fmt: skip
    store.upsert_results([o1, o2, n1])
    store.write_batch(predictions=[shadow], dead_letters=letters)
    store.add_feedback(tenant, "EGG-o1", "male", app="eggs", head="sex", at_us=OLD)
    store.add_feedback(tenant, "EGG-n1", "male", app="eggs", head="sex", at_us=NEW)
    Accounts(store).record_scans(
        [ScanRecord(tenant, ident, "application/dicom", 3, digest, None, None, None, "d", "t", at)
         for ident, digest, at in (("s-o1", a, OLD), ("s-o2", b, OLD), ("s-n1", b, NEW))]
    )  # fmt: skip
    return a, b


def _held(blobs: LocalBlobStore, tenant: str, digest: str) -> bool:
    try:
        blobs.get(BlobRef(uri="", sha256=digest, size=0), tenant)
    except BlobError:
        return False
    return True


def test_expire_deletes_what_was_stored_before_the_cutoff(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str], tmp_path: Path
) -> None:
    acme, globex = tenants
    blobs = LocalBlobStore(tmp_path / "blobs")
    a, b = _seed(store, make_row, acme, blobs)
    _seed(store, make_row, globex, blobs)
    tables = (records, predictions, feedback, dead_letters, scans)
    before = {t.name: _ids(store, t, globex) for t in tables}
    audit = AuditLog(store)

    done = expire(audit, blobs, acme, CUTOFF, WHO)

    assert (done.records, done.predictions, done.feedback, done.dead_letters, done.scans) == (
        2, 3, 1, 1, 2
    )  # fmt: skip
    assert (done.blobs_deleted, done.blobs_kept) == (1, 1)  # b: the new record and scan name it
    assert {t.name: _ids(store, t, acme) for t in tables} == {
        "records": {"n1"}, "predictions": {"n1"}, "feedback": {"EGG-n1"},
        "dead_letters": {f"d{NEW}"}, "scans": {"s-n1"},
    }  # fmt: skip
    assert {t.name: _ids(store, t, globex) for t in tables} == before
    assert not _held(blobs, acme, a) and _held(blobs, acme, b) and _held(blobs, globex, a)
    (entry,) = audit.entries(acme)
    assert entry.entry.action == ACTION
    assert json.loads(entry.entry.target)["records"] == 2
    # Nothing more to expire: nothing deleted, no entry.
    assert expire(audit, blobs, acme, CUTOFF, WHO).rows == 0
    assert len(list(audit.entries(acme))) == 1 and audit.verify(acme).ok
