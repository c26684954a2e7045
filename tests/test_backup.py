"""Backup and restore: a deployment with a row in every table and blobs (plain, named,
sealed) backed up, restored into an EMPTY one (a fresh SQLite file or PostgreSQL schema
and a fresh blob folder), and compared row by row and byte by byte; the audit chains
still verify, sealed blobs still open, and a non-empty target is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pg_testing import POSTGRES_URL, private_schema
from sqlalchemy import select
from test_registry import shipped

from inferstream.api.accounts import Accounts, ScanRecord
from inferstream.api.auth import hash_password, issue_key
from inferstream.backup import BackupError, backup, read_manifest, restore
from inferstream.blob_crypto import BlobCipher, data_keys
from inferstream.blobs import LocalBlobStore
from inferstream.cli import main
from inferstream.envelope import BlobRef
from inferstream.key_provider import LocalKeyProvider
from inferstream.registry import ModelRegistry, Switch
from inferstream.store import DeadLetterRow, ResultRow, ResultsStore, schema
from inferstream.store.audit import AuditEntry, AuditLog

AUDIT_KEY = b"backup-audit-key-0123456789abcdef"
KEK = LocalKeyProvider([bytes(range(32))])
TENANTS = ("acme", "globex")
#: The tables the seed fills (tables added later are compared too, empty or not).
SEEDED = (
    "records", "predictions", "dead_letters", "feedback", "tenants", "users", "api_keys",
    "scans", "auth_failures", "model_versions", "model_aliases", "model_audit",
    "model_switches", "audit_log", "audit_heads", "blob_data_keys", "blob_key_shreds",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key the registry signs its audit entries with too."""
    monkeypatch.setenv("INFERSTREAM_AUDIT_KEY", AUDIT_KEY.decode())
    monkeypatch.delenv("INFERSTREAM_KEK", raising=False)


def _row(tenant: str, n: int) -> ResultRow:
    return ResultRow(
        id=f"{tenant}-r{n}", tenant=tenant, label="female", confidence=0.1 + n / 7,
        scores={"female": 0.1 + n / 7, "male": 0.9 - n / 7}, model_name="egg_sexing",
        model_version="1.0.0", created_at_us=1_000 + n, ingested_at_us=2_000 + n,
        stored_at_us=3_000 + n, latency_ms=1.25 * n, subject=f"EGG-{n}", group="TRAY-1",
        source="SCANNER-01", lineage=({"stage": "classify", "at_us": 5, "worker": "w"},),
        app="eggs", root_id=f"{tenant}-s{n}", head="sex",
        attributes={"egg_id": f"EGG-{n}", "incubation_day": 12, "domain_score": 0.5 + n},
    )  # fmt: skip


def _seed(store: ResultsStore, root: Path) -> None:
    """A flagship-like deployment: two tenants with users, keys, scans and their blobs,
    records, shadow predictions, feedback, dead letters, audit entries, private models,
    a switch, encrypted blobs (data keys) and a shredded tenant."""
    plain, accounts = LocalBlobStore(root), Accounts(store)
    sealed = LocalBlobStore(root, BlobCipher(data_keys(store, KEK)))
    for tenant in TENANTS:
        accounts.create_tenant(tenant)
        accounts.create_user(tenant, "ops", hash_password("correct horse battery"), "admin")
        issue_key(accounts, tenant, "scanner", "device")
        rows = [_row(tenant, n) for n in range(5)]
        store.upsert_results(rows)
        shadow = dataclasses.replace(rows[0].champion(), role="shadow", model_version="2")
        letter = DeadLetterRow(f"{tenant}-d", tenant, "classify", "ModelError", "bad", 3,
                               "scans.raw", 0, 7, 9, root_id=f"{tenant}-s9")  # fmt: skip
        store.write_batch(predictions=[shadow], dead_letters=[letter])
        store.add_feedback(tenant, "EGG-1", "male", app="eggs", head="sex")
        scans = [ScanRecord(tenant, f"{tenant}-s{n}", "application/dicom", 9,
                            plain.put(f"scan {n}".encode(), tenant).sha256, f"EGG-{n}",
                            "TRAY-1", "SCANNER-01", "key:x", "t", 1) for n in range(5)]  # fmt: skip
        accounts.record_scans(scans)
        sealed.put(f"secret of {tenant}".encode(), tenant)
        entries = [AuditEntry(tenant, 10 + n, "key:k", "key", "admin", "GET /v1/results", "{}",
                              "127.0.0.1", 200, f"req-{n}") for n in range(3)]  # fmt: skip
        AuditLog(store, AUDIT_KEY).append(entries)
        graph, info = shipped()
        registry = ModelRegistry(store, plain)
        registry.register(graph, {**info, "version": f"{tenant}-1"}, actor="seed", tenant=tenant)
        registry.set_alias(info["name"], "pick", f"{tenant}-1", actor="seed", reason="seed",
                           tenant=tenant)  # fmt: skip
    accounts.add_failure("user:acme/ops", 5, 0, lambda n: n * 1_000)
    registry = ModelRegistry(store, plain)
    registry.record_switch(Switch(7, "eggs", "classify", "w-1", "egg_sexing", "champion", "1",
                                  "2", {"scans.raw": {"0": 12}}))  # fmt: skip
    data_keys(store, KEK).new_data_key("initech")
    data_keys(store, KEK).shred("initech", actor="seed")


def _tables(store: ResultsStore) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, in key order."""
    with store.engine.connect() as conn:
        return {
            table.name: [
                dict(row)
                for row in conn.execute(
                    select(table).order_by(*table.primary_key.columns)
                ).mappings()
            ]
            for table in schema.metadata.sorted_tables
        }


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@contextmanager
def _empty_store(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'restored.db'}"
        return
    with private_schema(POSTGRES_URL, "restored") as url:
        yield url


@pytest.mark.parametrize("target", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_restore_into_an_empty_deployment_is_the_same_deployment(
    store_url: str, target: str, tmp_path: Path
) -> None:
    """Each source (the fixture's SQLite and PostgreSQL) into each target database."""
    lines: list[str] = []
    with ResultsStore(store_url) as source:
        _seed(source, tmp_path / "blobs")
        before = _tables(source)
        assert all(AuditLog(source, AUDIT_KEY).verify(t).ok for t in TENANTS)
        manifest = backup(source, tmp_path / "blobs", tmp_path / "backup", lines.append)
    assert [name for name in SEEDED if not before[name]] == []
    assert {n: t["rows"] for n, t in manifest["tables"].items()} == {
        n: len(rows) for n, rows in before.items()
    }
    assert manifest["blobs"]["count"] == len(_files(tmp_path / "blobs")) == 14
    assert "backup: table records: 10 rows" in lines

    with _empty_store(target, tmp_path) as url, ResultsStore(url) as restored:
        restore(tmp_path / "backup", restored, tmp_path / "blobs-restored", progress=lines.append)
        assert _tables(restored) == before
        assert _files(tmp_path / "blobs-restored") == _files(tmp_path / "blobs")
        audit = AuditLog(restored, AUDIT_KEY)
        # Three entries of the seed's, and the registry's two (register, set the alias).
        assert {t: (audit.verify(t).ok, audit.verify(t).entries) for t in TENANTS} == {
            t: (True, 5) for t in TENANTS
        }
        sealed = LocalBlobStore(tmp_path / "blobs-restored", BlobCipher(data_keys(restored, KEK)))
        secret = b"secret of acme"
        ref = BlobRef(uri="", sha256=hashlib.sha256(secret).hexdigest(), size=0)
        assert sealed.get(ref, "acme") == secret
        # A new audit entry and a new registry change continue where the restored ones end.
        AuditLog(restored, AUDIT_KEY).append([dataclasses.replace(
            next(iter(audit.entries("acme"))).entry, request_id="after")])  # fmt: skip
        assert (audit.verify("acme").ok, audit.verify("acme").entries) == (True, 6)
        graph, info = shipped()
        ModelRegistry(restored, LocalBlobStore(tmp_path / "blobs-restored")).register(
            graph, {**info, "version": "after-restore"}, actor="t", tenant="acme"
        )

        with pytest.raises(BackupError, match="not empty"):
            restore(tmp_path / "backup", restored, tmp_path / "blobs-other")


def test_a_damaged_backup_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with ResultsStore(f"sqlite:///{tmp_path / 'a.db'}") as source:
        _seed(source, tmp_path / "blobs")
        backup(source, tmp_path / "blobs", tmp_path / "backup")
        with pytest.raises(BackupError, match="is not empty; back up into a new folder"):
            backup(source, tmp_path / "blobs", tmp_path / "backup")
    records = tmp_path / "backup" / "tables" / "records.jsonl"
    records.write_text(records.read_text().replace("female", "male", 1))
    with ResultsStore(f"sqlite:///{tmp_path / 'b.db'}") as target:
        with pytest.raises(BackupError, match=r"records\.jsonl does not match the manifest"):
            restore(tmp_path / "backup", target, tmp_path / "blobs-b")
        assert not any(_tables(target).values())
    assert not (tmp_path / "blobs-b").exists()
    with pytest.raises(BackupError, match=r"no readable manifest\.json"):
        read_manifest(tmp_path)


def _small_backup(tmp_path: Path) -> Path:
    """A backup of one record and one blob (the blob store's own layout)."""
    with ResultsStore(f"sqlite:///{tmp_path / 'small.db'}") as source:
        source.upsert_results([_row("acme", 1)])
        LocalBlobStore(tmp_path / "small-blobs").put(b"scan bytes", "acme")
        backup(source, tmp_path / "small-blobs", tmp_path / "small-backup")
    return tmp_path / "small-backup"


def _assert_nothing_restored(target: ResultsStore, blobs: Path) -> None:
    assert target.count_results("acme") == 0
    assert not any(_tables(target).values())
    assert not blobs.exists() or _files(blobs) == {}


@pytest.mark.parametrize("target", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_tampered_blob_is_refused_before_any_table_or_blob_is_written(
    target: str, tmp_path: Path
) -> None:
    source = _small_backup(tmp_path)
    (blob,) = (p for p in (source / "blobs").rglob("*") if p.is_file())
    blob.write_bytes(b"tampered")
    with _empty_store(target, tmp_path) as url, ResultsStore(url) as restored:
        with pytest.raises(BackupError, match=f"{blob.name}\\) does not match its blob list"):
            restore(source, restored, tmp_path / "blobs-restored")
        _assert_nothing_restored(restored, tmp_path / "blobs-restored")


def test_a_backup_naming_anything_but_its_own_files_is_refused(tmp_path: Path) -> None:
    source = _small_backup(tmp_path)
    outside = json.dumps({"key": "acme/../../../outside", "size": 1, "sha256": "0" * 64})
    (source / "blobs.jsonl").write_text(outside + "\n")
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["blobs"]["sha256"] = hashlib.sha256((outside + "\n").encode()).hexdigest()
    (source / "manifest.json").write_text(json.dumps(manifest))
    with ResultsStore(f"sqlite:///{tmp_path / 'target.db'}") as restored:
        with pytest.raises(BackupError, match=r"line 1 of .*blobs\.jsonl is not a blob"):
            restore(source, restored, tmp_path / "blobs-restored")
        _assert_nothing_restored(restored, tmp_path / "blobs-restored")
        for name in ("../small.db", "/etc/passwd", "tables/other.jsonl"):
            manifest = json.loads((source / "manifest.json").read_text())
            manifest["tables"]["records"]["file"] = name
            (source / "manifest.json").write_text(json.dumps(manifest))
            with pytest.raises(BackupError, match="names another file where a backup has"):
                restore(source, restored, tmp_path / "blobs-restored")
            _assert_nothing_restored(restored, tmp_path / "blobs-restored")


def test_backup_and_restore_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from inferstream.apps.eggs import APP

    pipeline = str(APP.pipeline_path())
    source, target = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    with ResultsStore(source) as store:
        _seed(store, tmp_path / "blobs")
        before = _tables(store)
    dest = str(tmp_path / "backup")
    assert main(["backup", pipeline, dest, "--store", source,
                 "--blobs", f"file://{tmp_path / 'blobs'}"]) == 0  # fmt: skip
    assert "backup: table audit_log: 10 rows" in capsys.readouterr().out
    restored = ["restore", pipeline, dest, "--store", target,
                "--blobs", f"file://{tmp_path / 'blobs-b'}"]  # fmt: skip
    assert main(restored) == 0
    assert "restore: done" in capsys.readouterr().out
    assert main(restored) == 2
    assert "pass --into-non-empty" in capsys.readouterr().err
    assert main([*restored, "--into-non-empty"]) == 0
    assert "restore: done" in capsys.readouterr().out
    with ResultsStore(target) as store:
        assert _tables(store) == before
    for tenant in TENANTS:  # the command an auditor runs, with the deployment's key
        assert main(["audit", "verify", pipeline, "--store", target, "--tenant", tenant]) == 0
        assert json.loads(capsys.readouterr().out)["ok"]
    assert json.loads((tmp_path / "backup" / "manifest.json").read_text())["blobs"]["count"] == 14
