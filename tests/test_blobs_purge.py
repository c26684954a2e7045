"""Blobs a retention purge may delete, on every blob store: a put of bytes already kept
refreshes their time, and a delete with ``unused_since_us`` spares a blob put since
then; a purge leaves nothing of its own behind."""

from __future__ import annotations

from blob_worlds import BlobWorld

from inferstream.blobs import content_key
from inferstream.envelope import now_us


def test_a_put_of_kept_bytes_refreshes_their_time(blob_world: BlobWorld) -> None:
    store = blob_world.store
    kept, control = store.put(b"pixels", "studio"), store.put(b"control", "studio")
    blob_world.tick()
    cutoff = now_us()
    blob_world.tick()
    assert store.put(b"pixels", "studio") == kept  # the same bytes: the same reference
    assert store.delete(kept.sha256, "studio", unused_since_us=cutoff) is False
    assert store.delete(control.sha256, "studio", unused_since_us=cutoff) is True
    assert store.get(kept, "studio") == b"pixels"


def test_delete_spares_what_was_put_since(blob_world: BlobWorld) -> None:
    store = blob_world.store
    old = store.put(b"old", "studio")
    blob_world.tick()
    cutoff = now_us()
    blob_world.tick()
    fresh = store.put(b"fresh", "studio")
    assert store.delete(old.sha256, "studio", unused_since_us=cutoff) is True
    assert store.delete(fresh.sha256, "studio", unused_since_us=cutoff) is False
    assert store.get(fresh, "studio") == b"fresh"  # left whole
    assert blob_world.stored_keys() == {content_key(fresh.sha256, "studio")}  # no purge leftovers
    assert store.delete(old.sha256, "studio") is False  # gone already
    assert store.delete(fresh.sha256, "studio") is True  # no condition: deleted
    assert blob_world.stored_keys() == set()
    assert store.put(b"fresh", "studio") == fresh and store.get(fresh, "studio") == b"fresh"


def test_tenants_are_the_folders_holding_blobs(blob_world: BlobWorld) -> None:
    store = blob_world.store
    store.put(b"a", "studio-b")
    store.put_at("photos/1.png", b"b", "studio-a")
    blob_world.write_raw(".hidden/x", b"x")
    blob_world.write_raw("stray.txt", b"x")
    assert store.tenants() == ["studio-a", "studio-b"]
