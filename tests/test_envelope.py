"""The envelope schema: committed code matches it, ids are deterministic, round trips keep data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferstream import protogen
from inferstream.blobs import LocalBlobStore, check_in, payload_bytes
from inferstream.envelope import (
    Envelope,
    derive_id,
    from_tensor,
    new_envelope,
    parse,
    to_tensor,
)
from inferstream.errors import BlobError, InvalidInput

ROOT = Path(__file__).resolve().parents[1]


def test_committed_generated_code_matches_the_schema(tmp_path: Path) -> None:
    for generated in protogen.generate(ROOT / "proto", tmp_path):
        committed = ROOT / "src" / "inferstream" / "_proto" / generated.name
        assert generated.read_bytes() == committed.read_bytes(), (
            f"{committed} is stale: run 'make proto' and commit the result"
        )


def test_unknown_fields_survive_a_round_trip() -> None:
    env = new_envelope(b"abc", "text/plain", tenant="t1")
    # Field 99 is unknown to this schema, as if written by a newer producer.
    newer = env.SerializeToString() + b"\x9a\x06\x05hello"
    again = parse(newer).SerializeToString()
    assert b"\x9a\x06\x05hello" in again


def test_derived_ids_are_deterministic_and_distinct() -> None:
    assert derive_id("a", "s", 0) == derive_id("a", "s", 0)
    assert len({derive_id("a", "s", 0), derive_id("a", "s", 1), derive_id("a", "t", 0)}) == 3


@pytest.mark.parametrize("data", [b"", b"\xff\xff\xff", b"\x0a\x05ab"])
def test_parse_rejects_garbage_with_a_reason(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse(data)


def test_newer_schema_version_is_refused() -> None:
    env = new_envelope(b"x", "text/plain")
    env.schema_version = 99
    with pytest.raises(InvalidInput, match="upgrade inferstream"):
        parse(env.SerializeToString())


def test_tensor_round_trip() -> None:
    array = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert np.array_equal(from_tensor(to_tensor(array)), array)
    broken = to_tensor(array)
    broken.shape[:] = [5, 5]
    with pytest.raises(InvalidInput, match="does not match"):
        from_tensor(broken)


def test_claim_check_moves_large_payloads_and_verifies_them(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    big = new_envelope(b"x" * 1000, "application/octet-stream")
    small = new_envelope(b"y", "application/octet-stream")
    check_in(big, store, threshold=100)
    check_in(small, store, threshold=100)
    assert big.payload.WhichOneof("body") == "blob" and small.payload.WhichOneof("body") == "inline"
    assert payload_bytes(Envelope.FromString(big.SerializeToString()), store) == b"x" * 1000
    path = next((tmp_path / "blobs").rglob(big.payload.blob.sha256))
    path.write_bytes(b"tampered")
    with pytest.raises(BlobError, match="checksum"):
        payload_bytes(big, store)


def test_blob_references_cannot_name_paths_and_torn_blobs_are_rewritten(tmp_path: Path) -> None:
    from inferstream.envelope import BlobRef

    store = LocalBlobStore(tmp_path / "blobs")
    (tmp_path / "secret").write_bytes(b"do not read")
    with pytest.raises(BlobError, match="not a SHA-256"):
        store.get(BlobRef(uri="x", sha256="../../secret", size=1), "default")
    ref = store.put(b"payload", "default")
    with pytest.raises(BlobError, match="not a plain name"):
        store.get(ref, "../default")
    path = next((tmp_path / "blobs").rglob(ref.sha256))
    path.write_bytes(b"")  # as a crash mid-write on a filesystem without ordering would leave
    store.put(b"payload", "default")
    assert path.read_bytes() == b"payload"


def test_a_blob_reference_never_reaches_another_tenants_bytes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    ref = store.put(b"tenant b's scan", "tenant-b")
    assert store.get(ref, "tenant-b") == b"tenant b's scan"
    with pytest.raises(BlobError, match="missing"):
        store.get(ref, "tenant-a")  # the same digest, asked for by another tenant
    stolen = new_envelope(b"", "application/dicom", tenant="tenant-a")
    stolen.payload.blob.CopyFrom(ref)
    with pytest.raises(BlobError, match="missing"):
        payload_bytes(stolen, store)
