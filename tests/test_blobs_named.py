"""Named blobs: written at a key of the caller's under the tenant's folder, read back
through their reference, and never outside that folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferstream.blobs import LocalBlobStore
from inferstream.errors import BlobError


def test_a_named_blob_lands_at_its_key_and_reads_back(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    ref = store.put_at("P001/2026-06-01/image.png", b"pixels", "farm-a")
    assert (tmp_path / "farm-a/P001/2026-06-01/image.png").read_bytes() == b"pixels"
    assert ref.uri.endswith("/farm-a/P001/2026-06-01/image.png")
    assert store.get(ref, "farm-a") == b"pixels"
    with pytest.raises(BlobError):
        store.get(ref, "farm-b")  # another tenant's folder has no such blob
    content = store.put(b"other", "farm-a")
    assert store.get(content, "farm-a") == b"other"  # content-addressed blobs still work


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs", "a//b", "", "a/./b", "a/.."])
def test_a_key_that_could_leave_the_tenant_folder_is_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(BlobError):
        LocalBlobStore(tmp_path).put_at(key, b"x", "farm-a")
