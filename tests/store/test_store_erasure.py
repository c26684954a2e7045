"""Erasing one subject on both stores: every row of it gone by id, nothing of another
subject or tenant touched, its blobs gone only when nothing left names them, audited."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pg_testing import ensure_role
from sqlalchemy import Table, select, text
from store_testing import RLS_ROLE, postgres_schema_url

from inferstream.api.accounts import Accounts, ScanRecord
from inferstream.blobs import LocalBlobStore
from inferstream.envelope import BlobRef
from inferstream.errors import BlobError
from inferstream.store import DeadLetterRow, ResultRow, ResultsStore
from inferstream.store.audit import AuditLog
from inferstream.store.erasure import (
    ACTION,
    Requester,
    SubjectNotFound,
    digests_named,
    erase_subject,
)
from inferstream.store.schema import (
    API_TENANT_TABLES,
    AUDIT_TABLES,
    TENANT_TABLES,
    dead_letters,
    feedback,
    predictions,
    records,
    scans,
)

RowFactory = Callable[..., ResultRow]
KEY = b"erasure-audit-key-0123456789abcdef"
WHO = Requester("cli:ops", "cli", "operator")
X, Y = "EGG-X", "EGG-Y"


@dataclasses.dataclass
class Seeded:
    blobs: LocalBlobStore
    #: Digests: only X's scan (a), shared by X and Y (b), Y's own (c).
    a: str
    b: str
    c: str


def _ids(store: ResultsStore, table: Table, tenant: str) -> set[tuple[str, ...]]:
    """Every row of ``tenant`` in ``table`` by its identifying columns."""
    key = {
        "records": ("id",),
        "predictions": ("record_id", "role"),
        "feedback": ("subject",),
        "dead_letters": ("id",),
        "scans": ("id",),
    }[table.name]
    columns = [table.c[name] for name in key]
    with store.tenant_transaction(tenant, "read") as conn:
        rows = conn.execute(select(*columns).where(table.c.tenant == tenant)).all()
    return {tuple(str(value) for value in row) for row in rows}


def _scan(tenant: str, ident: str, subject: str, digest: str) -> ScanRecord:
    return ScanRecord(tenant, ident, "application/dicom", 3, digest, subject, "TRAY-1",
                      "SCANNER-01", "key:dev", "trace", 1_000)  # fmt: skip


def _letter(tenant: str, root: str) -> DeadLetterRow:
    return DeadLetterRow(f"d-{root}", tenant, "classify", "ModelError", "bad", 3, "scans.raw",
                         0, 1, 1, root_id=root)  # fmt: skip


def _seed(store: ResultsStore, make_row: RowFactory, tenant: str, blobs: LocalBlobStore) -> Seeded:
    a, b, c = (blobs.put(data, tenant).sha256 for data in (b"scan-a", b"scan-b", b"scan-c"))
    x1 = make_row(tenant, "x1", subject=X, root_id="s1", attributes={"blob_sha256": a})
    x2 = make_row(tenant, "x2", subject=X, root_id="s2")
    x2b = make_row(tenant, "x2b", subject=X, root_id="s2", parent_id="x2",
                   attributes={"blob_path": f"{tenant}/{b[:2]}/{b}"})  # fmt: skip
    y1 = make_row(tenant, "y1", subject=Y, root_id="s3", attributes={"blob_sha256": c})
    shadow = dataclasses.replace(x1.champion(), role="shadow", model_version="2.0.0")
    letters = [_letter(tenant, root) for root in ("s1", "s3", "s9")]
    store.upsert_results([x1, x2, x2b, y1])
    store.write_batch(predictions=[shadow], dead_letters=letters)
    for subject in (X, Y):
        store.add_feedback(tenant, subject, "female", app="eggs", head="sex")
    Accounts(store).record_scans(
        [_scan(tenant, "s1", X, a), _scan(tenant, "s2", X, b), _scan(tenant, "s3", Y, b),
         _scan(tenant, "s9", X, a)]
    )  # fmt: skip
    return Seeded(blobs, a, b, c)


def _held(blobs: LocalBlobStore, tenant: str, digest: str) -> bool:
    try:
        blobs.get(BlobRef(uri="", sha256=digest, size=0), tenant)
    except BlobError:
        return False
    return True


def test_erasing_a_subject_removes_its_rows_and_unshared_blobs(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str], tmp_path: Path
) -> None:
    acme, globex = tenants
    blobs = LocalBlobStore(tmp_path / "blobs")
    seeded = _seed(store, make_row, acme, blobs)
    _seed(store, make_row, globex, blobs)
    tables = (records, predictions, feedback, dead_letters, scans)
    before = {(t.name, tenant): _ids(store, t, tenant) for t in tables for tenant in tenants}
    audit = AuditLog(store, KEY)

    done = erase_subject(audit, blobs, acme, X, WHO)

    assert (done.records, done.predictions, done.feedback, done.dead_letters, done.scans) == (
        3, 4, 1, 2, 3
    )  # fmt: skip
    # a was named by X's rows only; b by Y's scan s3 too.
    assert (done.blobs_deleted, done.blobs_kept) == (1, 1)
    after = {(t.name, tenant): _ids(store, t, tenant) for t in tables for tenant in tenants}
    assert after[("records", acme)] == {("y1",)}
    assert after[("predictions", acme)] == {("y1", "champion")}
    assert after[("feedback", acme)] == {(Y,)}
    assert after[("dead_letters", acme)] == {("d-s3",)}
    assert after[("scans", acme)] == {("s3",)}
    removed = sum(len(before[key] - after[key]) for key in before)
    assert removed == done.rows == 13
    for table in tables:  # the other tenant, same subject, same bytes: untouched
        assert after[(table.name, globex)] == before[(table.name, globex)]
    assert not _held(blobs, acme, seeded.a)
    assert _held(blobs, acme, seeded.b) and _held(blobs, acme, seeded.c)
    assert all(_held(blobs, globex, d) for d in (seeded.a, seeded.b, seeded.c))

    entries = list(audit.entries(acme))
    assert [e.entry.action for e in entries] == [ACTION]
    target = json.loads(entries[0].entry.target)
    assert target["subject"] == X and target["records"] == 3 and target["blobs_deleted"] == 1
    assert entries[0].entry.actor == "cli:ops"
    assert audit.verify(acme).ok


def test_an_erased_or_unknown_subject_is_not_found_and_not_audited(
    store: ResultsStore, make_row: RowFactory, tenants: tuple[str, str], tmp_path: Path
) -> None:
    acme, globex = tenants
    blobs = LocalBlobStore(tmp_path / "blobs")
    _seed(store, make_row, acme, blobs)
    audit = AuditLog(store, KEY)
    erase_subject(audit, blobs, acme, Y, WHO)
    for tenant, subject in ((acme, Y), (acme, "EGG-NOBODY"), (globex, X)):
        with pytest.raises(SubjectNotFound, match="holds nothing"):
            erase_subject(audit, blobs, tenant, subject, WHO)
    (entry,) = audit.entries(acme)
    assert json.loads(entry.entry.target)["subject"] == Y
    assert not list(audit.entries(globex))
    assert _ids(store, records, acme) == {("x1",), ("x2",), ("x2b",)}


def test_only_a_digest_or_a_path_in_the_tenants_folder_names_a_blob() -> None:
    digest = "ab" * 32
    named = {
        "blob_sha256": digest,
        "blob_path": f"acme/cd/{'cd' * 32}",
        "elsewhere": f"globex/ef/{'ef' * 32}",
        "note": f"see {digest}",
        "count": 3,
    }
    assert digests_named(named, "acme") == {digest, "cd" * 32}
    assert digests_named(None, "acme") == set()


@pytest.mark.postgres
def test_erasure_runs_under_row_level_security(
    pg_schema: str, make_row: RowFactory, tenants: tuple[str, str], tmp_path: Path
) -> None:
    """As a role that owns the tables (so the policies bind it): the erasure names its
    tenant for every statement, or it would find and delete nothing."""
    acme, globex = tenants
    blobs = LocalBlobStore(tmp_path / "blobs")
    owned = (*TENANT_TABLES, *API_TENANT_TABLES, *AUDIT_TABLES)
    with ResultsStore(postgres_schema_url(pg_schema)) as admin:
        for tenant in tenants:
            _seed(admin, make_row, tenant, blobs)
        with admin.engine.begin() as conn:
            ensure_role(conn, RLS_ROLE)
            conn.execute(text(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {RLS_ROLE}'))
            # Policies may read other tables (a grant of sharing): the role may read them.
            conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{pg_schema}" TO {RLS_ROLE}'))
            for table in owned:
                conn.execute(text(f"ALTER TABLE {table} OWNER TO {RLS_ROLE}"))
    url = postgres_schema_url(pg_schema, role=RLS_ROLE)
    with ResultsStore(url, migrate=False) as store:
        done = erase_subject(AuditLog(store, KEY), blobs, acme, X, WHO)
        assert (done.rows, done.blobs_deleted, done.blobs_kept) == (13, 1, 1)
        assert _ids(store, records, acme) == {("y1",)}
        assert _ids(store, records, globex) == {("x1",), ("x2",), ("x2b",), ("y1",)}
        assert AuditLog(store, KEY).verify(acme).ok
