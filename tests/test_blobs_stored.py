"""What a backup reads and a restore writes, on every blob store: the keys of every
blob under the root in key order (not a write or a purge in flight), their bytes as
stored (sealed ones still sealed), and writes of bytes as stored at a plain key only."""

from __future__ import annotations

import hashlib

import pytest
from blob_worlds import BlobWorld

from inferstream.blobs import SEALED_MAGIC, content_key
from inferstream.errors import BlobError


def test_the_stored_keys_are_every_blob_and_nothing_else_in_key_order(
    blob_world: BlobWorld,
) -> None:
    store = blob_world.store
    refs = [store.put(f"scan {n}".encode(), tenant) for n in range(3) for tenant in ("b", "a")]
    store.put_at("models/m/1/model.onnx", b"weights", "a")
    blob_world.write_raw("a/ab/.tmp-123", b"half a write")  # a write in flight
    blob_world.write_raw(".purging/a/ab/cd/1", b"")  # a purge's marker (S3)
    expected = sorted(
        [content_key(ref.sha256, tenant) for ref, tenant in zip(refs, "bababa", strict=True)]
        + ["a/models/m/1/model.onnx"]
    )
    assert list(store.stored_keys()) == expected
    assert store.read_stored("a/models/m/1/model.onnx") == b"weights"
    assert store.read_stored(content_key(hashlib.sha256(b"never").hexdigest(), "a")) is None


def test_bytes_are_read_and_written_as_stored_at_plain_keys_only(blob_world: BlobWorld) -> None:
    store = blob_world.store
    sealed = SEALED_MAGIC + b"ciphertext as a cipher left it"
    digest = hashlib.sha256(b"the plaintext").hexdigest()
    store.write_stored(f"acme/{digest[:2]}/{digest}", sealed)
    assert blob_world.raw(f"acme/{digest[:2]}/{digest}") == sealed
    assert store.read_stored(f"acme/{digest[:2]}/{digest}") == sealed
    for key in ("acme/../etc/passwd", "../x/y", ".purging/acme/x", "acme"):
        with pytest.raises(BlobError, match=r"is not plain|cannot own blobs"):
            store.write_stored(key, b"x")
    assert list(store.stored_keys()) == [f"acme/{digest[:2]}/{digest}"]
