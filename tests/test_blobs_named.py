"""Named blobs: written at a key of the caller's under the tenant's folder, read back
through their reference, and never outside that folder; on every blob store."""

from __future__ import annotations

import pytest
from blob_worlds import BlobWorld

from inferstream.errors import BlobError


def test_a_named_blob_lands_at_its_key_and_reads_back(blob_world: BlobWorld) -> None:
    store = blob_world.store
    ref = store.put_at("P001/2026-06-01/image.png", b"pixels", "farm-a")
    assert blob_world.raw("farm-a/P001/2026-06-01/image.png") == b"pixels"
    assert ref.uri == f"{store.url}/farm-a/P001/2026-06-01/image.png"
    assert store.get(ref, "farm-a") == b"pixels"
    with pytest.raises(BlobError):
        store.get(ref, "farm-b")  # another tenant's folder has no such blob
    content = store.put(b"other", "farm-a")
    assert store.get(content, "farm-a") == b"other"  # content-addressed blobs still work
    again = store.put_at("P001/2026-06-01/image.png", b"pixels, retaken", "farm-a")
    assert store.get(again, "farm-a") == b"pixels, retaken"  # a rewrite replaces the bytes
    with pytest.raises(BlobError, match="does not match its checksum"):
        store.get(ref, "farm-a")  # the old reference no longer matches what is there


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs", "a//b", "", "a/./b", "a/.."])
def test_a_key_that_could_leave_the_tenant_folder_is_refused(
    blob_world: BlobWorld, key: str
) -> None:
    with pytest.raises(BlobError, match="is not plain"):
        blob_world.store.put_at(key, b"x", "farm-a")
    assert blob_world.stored_keys() == set()
