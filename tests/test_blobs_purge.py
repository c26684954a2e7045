"""Blobs a retention purge may delete: a put of bytes already kept refreshes their time,
and a delete with ``unused_since_us`` spares a blob put since then."""

from __future__ import annotations

import os
from pathlib import Path

from inferstream.blobs import LocalBlobStore
from inferstream.envelope import now_us


def _age(path: Path, seconds: float) -> None:
    then = path.stat().st_mtime - seconds
    os.utime(path, (then, then))


def test_a_put_of_kept_bytes_refreshes_their_time(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    ref = store.put(b"pixels", "studio")
    path = tmp_path / "studio" / ref.sha256[:2] / ref.sha256
    _age(path, 3600)
    old = path.stat().st_mtime_ns
    assert store.put(b"pixels", "studio") == ref
    assert path.stat().st_mtime_ns > old


def test_delete_spares_what_was_put_since(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    old, fresh = store.put(b"old", "studio"), store.put(b"fresh", "studio")
    _age(tmp_path / "studio" / old.sha256[:2] / old.sha256, 3600)
    cutoff = now_us() - 60 * 1_000_000
    assert store.delete(old.sha256, "studio", unused_since_us=cutoff) is True
    assert store.delete(fresh.sha256, "studio", unused_since_us=cutoff) is False
    assert store.get(fresh, "studio") == b"fresh"  # put back whole
    assert store.delete(old.sha256, "studio") is False  # gone already
    assert store.delete(fresh.sha256, "studio") is True  # no condition: deleted
    assert store.put(b"fresh", "studio") == fresh and store.get(fresh, "studio") == b"fresh"
    assert not list((tmp_path / "studio").rglob(".purge-*"))


def test_tenants_are_the_folders_holding_blobs(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put(b"a", "studio-b")
    store.put(b"b", "studio-a")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    assert store.tenants() == ["studio-a", "studio-b"]
