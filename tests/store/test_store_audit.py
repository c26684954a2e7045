"""The audit log's chain on both stores: append-only, tampering found, no fork, isolated."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
from pg_testing import ensure_role
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from store_testing import RLS_ROLE, postgres_schema_url

from inferstream.store import ResultsStore
from inferstream.store.audit import AuditEntry, AuditLog, entry_hash, head_mac
from inferstream.store.schema import AUDIT_TABLES

KEY = b"audit-key-" + b"0123456789abcdef" * 2


def _entry(tenant: str, n: int) -> AuditEntry:
    return AuditEntry(tenant, 1_000 + n, f"key:k{n}", "key", "admin", "GET /v1/results",
                      "{}", "127.0.0.1", 200, f"r{n}")  # fmt: skip


@pytest.fixture
def audit(store: ResultsStore) -> AuditLog:
    return AuditLog(store, KEY)


def _as_db_admin(conn: Connection, sql: str, **params: object) -> None:
    """A change made behind the API's back, the append-only trigger out of the way."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
    else:
        conn.execute(text("DROP TRIGGER IF EXISTS audit_log_no_update"))
        conn.execute(text("DROP TRIGGER IF EXISTS audit_log_no_delete"))
    conn.execute(text(sql), params)


def test_a_chain_of_appends_verifies(audit: AuditLog) -> None:
    audit.append([_entry("acme", n) for n in range(3)])
    audit.append([_entry("acme", 3), _entry("globex", 0)])
    result = audit.verify("acme")
    assert (result.ok, result.entries, result.signed) == (True, 4, True)
    assert [e.entry.request_id for e in audit.entries("acme")] == ["r0", "r1", "r2", "r3"]
    assert audit.verify("globex").entries == 1
    assert audit.verify("nobody").ok


def test_update_and_delete_are_refused(audit: AuditLog, store: ResultsStore) -> None:
    audit.append([_entry("acme", 0)])
    for sql in ("UPDATE audit_log SET status = 403", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(sql))
    assert audit.verify("acme").entries == 1


def test_a_changed_entry_is_found(audit: AuditLog, store: ResultsStore) -> None:
    audit.append([_entry("acme", n) for n in range(5)])
    with store.engine.begin() as conn:
        _as_db_admin(
            conn, "UPDATE audit_log SET actor = 'someone' WHERE tenant = 'acme' AND seq = 3"
        )
    result = audit.verify("acme")
    assert (result.ok, result.first_broken, result.entries) == (False, 3, 2)
    assert "content" in result.reason


def test_a_removed_entry_is_found(audit: AuditLog, store: ResultsStore) -> None:
    audit.append([_entry("acme", n) for n in range(5)])
    with store.engine.begin() as conn:
        _as_db_admin(conn, "DELETE FROM audit_log WHERE tenant = 'acme' AND seq = 2")
    assert audit.verify("acme").first_broken == 2
    with store.engine.begin() as conn:
        _as_db_admin(conn, "DELETE FROM audit_log WHERE tenant = 'acme' AND seq = 5")
    assert audit.verify("acme").first_broken == 2


def test_a_recomputed_chain_is_caught_by_the_key_only(audit: AuditLog, store: ResultsStore) -> None:
    audit.append([_entry("acme", n) for n in range(4)])
    forged = [_forged(s.entry) if s.seq == 2 else s.entry for s in audit.entries("acme")]
    last = "0" * 64
    with store.engine.begin() as conn:
        for seq, entry in enumerate(forged, 1):
            digest = entry_hash(seq, entry, last)
            _as_db_admin(conn, "UPDATE audit_log SET actor = :a, prev_hash = :p, hash = :h "
                         "WHERE tenant = 'acme' AND seq = :s",
                         a=entry.actor, p=last, h=digest, s=seq)  # fmt: skip
            last = digest
        # Without the key the head's MAC cannot be made: a guess is left.
        conn.execute(text("UPDATE audit_heads SET hash = :h, mac = :m WHERE tenant = 'acme'"),
                     {"h": last, "m": head_mac(b"a guess", "acme", 4, last)})  # fmt: skip
    caught = audit.verify("acme")
    assert (caught.ok, caught.signed) == (False, True)
    assert "HMAC" in caught.reason
    unsigned = AuditLog(store).verify("acme")  # no key: the rewrite passes (documented)
    assert (unsigned.ok, unsigned.signed) == (True, False)


def _forged(entry: AuditEntry) -> AuditEntry:
    return dataclasses.replace(entry, actor="nobody")


def test_appends_from_many_threads_never_fork_the_chain(store_url: str) -> None:
    """Two store objects (two API processes' pools), several threads each."""
    stores = [ResultsStore(store_url) for _ in range(2)]
    try:
        logs = [AuditLog(s, KEY) for s in stores]
        workers = [
            threading.Thread(target=_append_many, args=(log, t)) for t, log in enumerate(logs * 2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        result = logs[0].verify("acme")
        assert (result.ok, result.entries) == (True, 60)
        ids = {s.entry.request_id for s in logs[0].entries("acme")}
        assert ids == {f"r{t * 100 + n}" for t in range(4) for n in range(15)}
    finally:
        for store in stores:
            store.close()


def _append_many(audit: AuditLog, thread: int) -> None:
    for n in range(15):
        audit.append([_entry("acme", thread * 100 + n)])


@pytest.fixture
def rls_audit(pg_schema: str) -> Iterator[AuditLog]:
    """The audit log as a role that owns its tables (superusers bypass row-level security)."""
    with ResultsStore(postgres_schema_url(pg_schema)) as store, store.engine.begin() as conn:
        ensure_role(conn, RLS_ROLE)
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {RLS_ROLE}'))
        for table in AUDIT_TABLES:
            conn.execute(text(f"ALTER TABLE {table} OWNER TO {RLS_ROLE}"))
    with ResultsStore(postgres_schema_url(pg_schema, role=RLS_ROLE), migrate=False) as store:
        yield AuditLog(store, KEY)


@pytest.mark.postgres
def test_row_level_security_shows_a_tenant_only_its_chain(rls_audit: AuditLog) -> None:
    audit = rls_audit
    audit.append([_entry("acme", 0), _entry("globex", 0), _entry("globex", 1)])
    assert [s.entry.tenant for s in audit.entries("acme")] == ["acme"]
    assert audit.verify("globex").entries == 2
    engine = audit.store.engine
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('inferstream.tenant', 'acme', true)"))
        seen = conn.execute(text("SELECT DISTINCT tenant FROM audit_log")).scalars().all()
        heads = conn.execute(text("SELECT tenant FROM audit_heads")).scalars().all()
    assert (seen, heads) == (["acme"], ["acme"])
    with pytest.raises(DBAPIError, match="row-level security"), engine.begin() as conn:
        conn.execute(text("SELECT set_config('inferstream.tenant', 'acme', true)"))
        conn.execute(
            text(
                "INSERT INTO audit_log VALUES ('globex', 9, 1, 'a', 'key', 'admin', 'x', "
                "'{}', '', 200, '', '', '', '')"
            )
        )
