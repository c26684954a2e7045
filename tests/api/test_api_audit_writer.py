"""The background appender: entries wait while the store cannot take them, in order,
up to its bound, and are written once it can; none is lost silently at shutdown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from inferstream.api.audit_writer import AuditWriter
from inferstream.errors import StoreError
from inferstream.store import ResultsStore
from inferstream.store.audit import AuditEntry, AuditLog


def _entry(n: int) -> AuditEntry:
    return AuditEntry("acme", n, "key:k", "key", "admin", "GET /v1/whoami", "{}", "", 200, f"r{n}")


def test_entries_wait_for_the_store_then_are_written_in_order(tmp_path: Path) -> None:
    # A store whose tables are not there yet: every append fails until it is migrated.
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}", migrate=False)
    writer = AuditWriter(AuditLog(store), bound=5, linger_s=0.0)
    writer.start()
    try:
        for n in range(5):
            writer.submit(_entry(n))
        assert writer.full
        with pytest.raises(StoreError, match="audit"):
            writer.flush(timeout_s=0.5)
        store.migrate()
        writer.flush(timeout_s=30)
        assert not writer.full
        written = [s.entry.request_id for s in writer.log.entries("acme")]
        assert written == [f"r{n}" for n in range(5)]
        assert writer.log.verify("acme").ok
    finally:
        writer.close()
        store.close()


def test_entries_the_store_never_took_are_counted_at_shutdown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}", migrate=False)
    writer = AuditWriter(AuditLog(store), linger_s=0.0)
    writer.start()
    writer.submit(_entry(1))
    writer.submit(_entry(2))
    with caplog.at_level(logging.ERROR, logger="inferstream.api.audit_writer"):
        writer.close(timeout_s=1)
    store.close()
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "2 entries lost" in str(record.__dict__["error"])
