"""The claim-check blob store's promises, on every blob store: content addressed under
the tenant, checked against the digest on every read, and a read names the tenant."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from blob_worlds import BlobWorld

from inferstream.blobs import LocalBlobStore, check_in, content_key, payload_bytes
from inferstream.envelope import BlobRef, new_envelope
from inferstream.errors import BlobError, BlobStoreFullError


def test_bytes_are_kept_under_their_digest_in_the_tenants_folder(blob_world: BlobWorld) -> None:
    store = blob_world.store
    data = b"\x00scan" * 1000
    ref = store.put(data, "farm")
    digest = hashlib.sha256(data).hexdigest()
    assert (ref.sha256, ref.size) == (digest, len(data))
    assert ref.uri == f"{store.url}/farm/{digest[:2]}/{digest}"
    assert blob_world.stored_keys() == {f"farm/{digest[:2]}/{digest}"}
    assert store.put(data, "farm") == ref  # a redelivery: the same blob
    assert store.get(BlobRef(uri="", sha256=digest, size=0), "farm") == data  # by digest


def test_a_blob_changed_behind_the_stores_back_is_refused(blob_world: BlobWorld) -> None:
    store = blob_world.store
    ref = store.put(b"the scan as sent", "farm")
    key = content_key(ref.sha256, "farm")
    blob_world.write_raw(key, b"the scan as sent, but not quite")
    with pytest.raises(BlobError, match="does not match its checksum") as refused:
        store.get(ref, "farm")
    assert key in str(refused.value)  # says which blob
    blob_world.remove_raw(key)
    with pytest.raises(BlobError, match="missing"):
        store.get(ref, "farm")


def test_a_digest_never_reaches_another_tenants_bytes(blob_world: BlobWorld) -> None:
    store = blob_world.store
    ref = store.put(b"farm a's scan", "farm-a")
    with pytest.raises(BlobError, match="missing"):
        store.get(ref, "farm-b")  # its full URI, read as farm-b: looked up in farm-b's folder
    with pytest.raises(BlobError, match="not a plain name"):
        store.get(ref, "../farm-a")
    with pytest.raises(BlobError, match="not a SHA-256"):
        store.get(BlobRef(uri="", sha256="../../x", size=0), "farm-a")
    assert store.get(ref, "farm-a") == b"farm a's scan"


def test_a_claim_check_carries_the_reference_and_reads_back(blob_world: BlobWorld) -> None:
    store = blob_world.store
    big, small = b"\x01" * 2048, b"\x02" * 16
    envs = [new_envelope(data, "application/octet-stream", tenant="farm") for data in (big, small)]
    checked = [check_in(env, store, threshold=1024) for env in envs]
    assert [e.payload.WhichOneof("body") for e in checked] == ["blob", "inline"]
    assert checked[0].payload.blob.uri.startswith(store.url + "/farm/")
    assert [payload_bytes(e, store) for e in checked] == [big, small]


def test_a_full_disk_is_told_apart_and_space_freed_lets_the_put_succeed(small_disk: Path) -> None:
    store = LocalBlobStore(small_disk / "blobs")
    kept: list[BlobRef] = []
    with pytest.raises(BlobStoreFullError, match="disk is full") as full:
        for number in range(200):  # 200 x 64 KB for a 4 MB disk
            kept.append(store.put(number.to_bytes(4, "big") * 16384, "farm"))
    assert isinstance(full.value, BlobError)  # the API answers 503 for it, as for any
    assert 0 < len(kept) < 200
    assert not list((small_disk / "blobs").rglob(".tmp-*"))  # no half-written file left
    store.delete(kept[0].sha256, "farm")
    store.delete(kept[1].sha256, "farm")
    data = len(kept).to_bytes(4, "big") * 16384
    assert store.get(store.put(data, "farm"), "farm") == data


def test_a_kept_blob_is_its_owners_alone_and_never_half_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    ref = store.put(b"a scan of farm's", "farm")
    path = tmp_path / "blobs" / content_key(ref.sha256, "farm")
    assert path.stat().st_mode & 0o777 == 0o600  # scans are no one else's to read
    real_write = os.write

    def write_half(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.EIO, "the disk went away")

    monkeypatch.setattr(os, "write", write_half)
    with pytest.raises(BlobError, match="could not write blob"):
        store.put(b"another scan, cut off halfway", "farm")
    monkeypatch.undo()
    assert [p.name for p in path.parent.parent.rglob("*") if p.is_file()] == [path.name]
    data = b"another scan, cut off halfway"
    assert store.get(store.put(data, "farm"), "farm") == data  # the next put writes it whole
