"""Backup and restore with blobs on S3 (moto's server, reached through the standard AWS
settings): a deployment whose blobs (plain, named, sealed) are in one bucket is backed
up and restored into an EMPTY deployment whose blobs are in another bucket; every
record is compared by id and every blob by key and SHA-256, sealed blobs still open
with the restored data keys; a non-empty bucket, a missing one and a damaged blob are
refused."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from blob_worlds import S3World, s3_world
from broker_testing import S3Server, free_port

from inferstream import backup as backup_module
from inferstream.backup import BackupError, backup, restore
from inferstream.blob_crypto import BlobCipher, data_keys
from inferstream.blobs_s3 import S3BlobStore
from inferstream.cli import main
from inferstream.envelope import BlobRef
from inferstream.key_provider import LocalKeyProvider
from inferstream.store import ResultRow, ResultsStore

KEK = LocalKeyProvider([bytes(range(32))])
TENANTS = ("acme", "globex")


@pytest.fixture
def bucket_a(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3World]:
    world = s3_world(monkeypatch, s3, "site-a/blobs")
    try:
        yield world
    finally:
        world.close()


@pytest.fixture
def bucket_b(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3World]:
    world = s3_world(monkeypatch, s3, "site-b")
    try:
        yield world
    finally:
        world.close()


def _record(tenant: str, n: int, digest: str) -> ResultRow:
    return ResultRow(
        id=f"{tenant}-r{n}", tenant=tenant, label="male", confidence=0.5, scores={"male": 0.5},
        model_name="m", model_version="1", created_at_us=1, ingested_at_us=2,
        stored_at_us=3 + n, latency_ms=1.0, app="eggs", subject=f"S-{n}", head="sex",
        root_id=f"{tenant}-s{n}", attributes={"blob_sha256": digest},
    )  # fmt: skip


def _seed(store: ResultsStore, world: S3World) -> None:
    """Per tenant: records naming their plain blobs, a named blob, a sealed blob."""
    sealed = S3BlobStore(world.bucket, world.prefix, BlobCipher(data_keys(store, KEK)))
    try:
        for tenant in TENANTS:
            refs = [world.store.put(f"scan {n} of {tenant}".encode(), tenant) for n in range(6)]
            store.upsert_results([_record(tenant, n, ref.sha256) for n, ref in enumerate(refs)])
            world.store.put_at("models/m/1/model.onnx", b"weights", tenant)
            sealed.put(f"secret of {tenant}".encode(), tenant)
    finally:
        sealed.close()


def _records(store: ResultsStore) -> dict[str, tuple[str, str]]:
    return {
        row.id: (row.tenant, str(row.attributes["blob_sha256"]))
        for tenant in TENANTS
        for row in store.list_results(tenant, limit=100).items
    }


def _blobs(world: S3World) -> dict[str, str]:
    """Every object under the world's prefix: key -> SHA-256 of its bytes as stored."""
    return {key: hashlib.sha256(world.raw(key) or b"").hexdigest() for key in world.stored_keys()}


def test_blobs_on_s3_restore_into_another_bucket(
    store_url: str,
    bucket_a: S3World,
    bucket_b: S3World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backup_module, "PROGRESS_SECONDS", 0.0)  # a line for every blob
    lines: list[str] = []
    with ResultsStore(store_url) as source:
        _seed(source, bucket_a)
        bucket_a.write_raw(".purging/acme/aa/marker/1", b"")  # a purge's marker: no blob
        before = _records(source)
        manifest = backup(source, bucket_a.store, tmp_path / "backup", lines.append)
    blobs = _blobs(bucket_a)
    assert len(before) == 12 and len(blobs) == 2 * 8 + 1
    assert manifest["blobs"]["count"] == 16 and manifest["blobs"]["url"] == bucket_a.store.url
    assert (
        f"backup: blobs: 16 ({manifest['blobs']['bytes']} bytes) from {bucket_a.store.url}" in lines
    )

    assert "backup: 16 blobs, " in " ".join(lines)
    with ResultsStore(f"sqlite:///{tmp_path / 'restored.db'}") as target:
        restore(tmp_path / "backup", target, bucket_b.store, progress=lines.append)
        assert "restore: 16 blobs, " in " ".join(lines)
        assert _records(target) == before
        restored = _blobs(bucket_b)
        assert restored == {k: v for k, v in blobs.items() if not k.startswith(".purging/")}
        # Every record's blob is there, under its tenant, with the bytes it names.
        for tenant, digest in before.values():
            ref = BlobRef(uri="", sha256=digest, size=0)
            assert hashlib.sha256(bucket_b.store.get(ref, tenant)).hexdigest() == digest
        # Sealed blobs were copied still sealed, and open with the restored data keys.
        secret = b"secret of globex"
        key = (
            f"globex/{hashlib.sha256(secret).hexdigest()[:2]}/{hashlib.sha256(secret).hexdigest()}"
        )
        assert secret not in (bucket_b.raw(key) or b"")
        cipher = BlobCipher(data_keys(target, KEK))
        opener = S3BlobStore(bucket_b.bucket, bucket_b.prefix, cipher)
        try:
            ref = BlobRef(uri="", sha256=hashlib.sha256(secret).hexdigest(), size=0)
            assert opener.get(ref, "globex") == secret
        finally:
            opener.close()

    refused = f"blob store {bucket_b.store.url} is not empty"
    with (
        ResultsStore(f"sqlite:///{tmp_path / 'other.db'}") as other,
        pytest.raises(BackupError, match=refused),
    ):
        restore(tmp_path / "backup", other, bucket_b.store)


def test_the_commands_name_a_missing_bucket_and_refuse_a_damaged_blob(
    bucket_a: S3World,
    bucket_b: S3World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from inferstream.apps.eggs import APP

    source = f"sqlite:///{tmp_path / 'a.db'}"
    with ResultsStore(source) as store:
        ref = bucket_a.store.put(b"scan bytes", "acme")
        store.upsert_results([_record("acme", 0, ref.sha256)])
    dest = str(tmp_path / "backup")
    pipeline, url_a = str(APP.pipeline_path()), bucket_a.store.url
    assert main(["backup", pipeline, dest, "--store", source, "--blobs", url_a]) == 0
    assert f"backup: blobs: 1 (10 bytes) from {url_a}" in capsys.readouterr().out

    restore = ["restore", pipeline, dest, "--store", f"sqlite:///{tmp_path / 'b.db'}"]
    assert main([*restore, "--blobs", "s3://no-such-bucket-x1/p"]) == 2
    assert "bucket 'no-such-bucket-x1' does not exist" in capsys.readouterr().err
    blob = Path(dest) / "blobs" / f"acme/{ref.sha256[:2]}/{ref.sha256}"
    blob.write_bytes(b"changed")
    assert main([*restore, "--blobs", bucket_b.store.url]) == 2
    assert f"blob acme/{ref.sha256[:2]}/{ref.sha256} of the backup" in capsys.readouterr().err
    assert bucket_b.stored_keys() == set()

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    again = ["backup", pipeline, str(tmp_path / "again"), "--store", source, "--blobs", url_a]
    assert main(again) == 2
    assert "did not answer: check that it runs and AWS_ENDPOINT_URL" in capsys.readouterr().err
