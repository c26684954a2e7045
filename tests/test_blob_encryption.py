"""Encryption at rest of blobs: on a real folder and the S3 test server, with the data
keys in SQLite and PostgreSQL; rotation of both keys, crypto-shredding, wrong keys."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from blob_worlds import BlobWorld

from inferstream.apps.eggs import APP
from inferstream.blob_crypto import HEADER, BlobCipher, DataKeys, data_keys, open_blobs
from inferstream.blobs import PLAIN, SEALED_MAGIC, BlobStore, content_key, open_blob_store
from inferstream.cli import main
from inferstream.envelope import BlobRef
from inferstream.errors import BlobError, ConfigError, TenantShredded
from inferstream.key_provider import KEK_ENV, LocalKeyProvider, kek_id_of, key_provider_from_env
from inferstream.store import ResultsStore
from inferstream.store.blob_keys import BlobKeyTable

#: A known plaintext run: no ciphertext holds it by chance.
SECRET = b"PATIENT-NAME^DOE^JANE-" * 400


def kek() -> bytes:
    return os.urandom(32)


def sealed(world: BlobWorld, keys: DataKeys) -> BlobStore:
    """The world's store (same folder or bucket and prefix) sealing with ``keys``."""
    return open_blob_store(world.store.url, BlobCipher(keys))


@pytest.fixture
def results(store_url: str) -> Iterator[ResultsStore]:
    with ResultsStore(store_url) as store:
        yield store


def test_blobs_at_rest_are_not_the_plaintext_and_read_back(
    blob_world: BlobWorld, results: ResultsStore, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    blobs = sealed(blob_world, data_keys(results, LocalKeyProvider([kek()])))
    ref = blobs.put(SECRET, acme)
    named = blobs.put_at("photos/2026/one.png", SECRET + b"named", acme)

    stored = blob_world.raw(content_key(ref.sha256, acme))
    at_name = blob_world.raw(f"{acme}/photos/2026/one.png")
    assert stored is not None and at_name is not None
    for raw in (stored, at_name):
        assert raw.startswith(SEALED_MAGIC) and b"PATIENT-NAME" not in raw
    assert len(stored) == HEADER.size + len(SECRET) + 16
    assert ref.sha256 == hashlib.sha256(SECRET).hexdigest()  # the plaintext's
    assert blobs.get(ref, acme) == SECRET
    assert blobs.get(named, acme) == SECRET + b"named"
    # A second put of the same bytes keeps the content address (digest of the plaintext).
    assert blobs.put(SECRET, acme) == ref and blobs.get(ref, acme) == SECRET


def test_blobs_from_before_encryption_still_read_and_are_sealed_when_put_again(
    blob_world: BlobWorld, results: ResultsStore, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    old = blob_world.store.put(SECRET, acme)  # encryption off
    assert blob_world.raw(content_key(old.sha256, acme)) == SECRET
    blobs = sealed(blob_world, data_keys(results, LocalKeyProvider([kek()])))
    assert blobs.get(old, acme) == SECRET
    assert blobs.put(SECRET, acme) == old
    raw = blob_world.raw(content_key(old.sha256, acme))
    assert raw is not None and b"PATIENT-NAME" not in raw and blobs.get(old, acme) == SECRET


def test_a_changed_or_moved_blob_fails_and_a_plain_store_says_it_needs_the_key(
    blob_world: BlobWorld, results: ResultsStore, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    blobs = sealed(blob_world, data_keys(results, LocalKeyProvider([kek()])))
    ref = blobs.put(SECRET, acme)
    raw = blob_world.raw(content_key(ref.sha256, acme))
    assert raw is not None
    blobs.put(b"globex's own", globex)  # globex has a key of its own
    blob_world.write_raw(content_key(ref.sha256, globex), raw)  # moved across tenants
    with pytest.raises(BlobError, match="fails its authentication"):
        blobs.get(ref, globex)
    flipped = raw[:-1] + bytes([raw[-1] ^ 1])
    blob_world.write_raw(content_key(ref.sha256, acme), flipped)
    with pytest.raises(BlobError, match="fails its authentication"):
        blobs.get(ref, acme)
    blob_world.write_raw(content_key(ref.sha256, acme), raw)
    with pytest.raises(BlobError, match="encrypted and this process has no key"):
        open_blob_store(blob_world.store.url, PLAIN).get(ref, acme)


def test_kek_rotation_rewraps_every_data_key_and_blobs_read_under_the_new_kek(
    blob_world: BlobWorld, results: ResultsStore, tenants: tuple[str, str]
) -> None:
    old_kek, new_kek = kek(), kek()
    blobs = sealed(blob_world, data_keys(results, LocalKeyProvider([old_kek])))
    refs = {tenant: blobs.put(SECRET + tenant.encode(), tenant) for tenant in tenants}

    # Every process holds both, the new one first; then one of them rewraps.
    both = data_keys(results, LocalKeyProvider([new_kek, old_kek]))
    assert both.rewrap_all() == 2
    assert both.rewrap_all() == 0  # nothing left to do
    table = BlobKeyTable(results)
    assert {k.kek_id for t in tenants for k in table.of_tenant(t)} == {kek_id_of(new_kek)}

    only_new = sealed(blob_world, data_keys(results, LocalKeyProvider([new_kek])))
    for tenant, ref in refs.items():
        assert only_new.get(ref, tenant) == SECRET + tenant.encode()
    with pytest.raises(ConfigError, match=f"{KEK_ENV} does not hold"):
        sealed(blob_world, data_keys(results, LocalKeyProvider([old_kek]))).get(
            refs[tenants[0]], tenants[0]
        )


def test_a_new_data_key_seals_new_blobs_and_old_ones_keep_theirs(
    blob_world: BlobWorld, results: ResultsStore, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    provider = LocalKeyProvider([kek()])
    keys = data_keys(results, provider)
    blobs = sealed(blob_world, keys)
    first = blobs.put(b"before" * 100, acme)
    assert keys.new_data_key(acme) == 2
    second = blobs.put(b"after" * 100, acme)
    versions = []
    for ref in (first, second):
        raw = blob_world.raw(content_key(ref.sha256, acme))
        assert raw is not None
        versions.append(HEADER.unpack_from(raw)[2])
    assert versions == [1, 2]
    fresh = sealed(blob_world, data_keys(results, provider))  # another process
    assert fresh.get(first, acme) == b"before" * 100
    assert fresh.get(second, acme) == b"after" * 100


def test_shredding_a_tenant_makes_its_blobs_unreadable_with_a_precise_error(
    blob_world: BlobWorld, results: ResultsStore, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    provider = LocalKeyProvider([kek()])
    keys = data_keys(results, provider)
    blobs = sealed(blob_world, keys)
    refs = {tenant: blobs.put(SECRET, tenant) for tenant in tenants}
    keys.new_data_key(acme)
    assert keys.shred(acme, actor="cli:ops") == 2
    assert BlobKeyTable(results).of_tenant(acme) == []

    other_process = sealed(blob_world, data_keys(results, provider))
    for store in (blobs, other_process):
        with pytest.raises(TenantShredded, match=f"blob keys of tenant '{acme}' were shredded"):
            store.get(refs[acme], acme)
        with pytest.raises(TenantShredded, match="none are written for it"):
            store.put(b"more" * 10, acme)
        assert store.get(refs[globex], globex) == SECRET  # the other tenant is untouched
    with pytest.raises(TenantShredded):
        keys.new_data_key(acme)


def test_a_process_with_cached_keys_sees_a_shred_once_its_cache_expires(
    blob_world: BlobWorld, results: ResultsStore, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    provider, now = LocalKeyProvider([kek()]), [0.0]
    reader_keys = DataKeys(BlobKeyTable(results), provider, cache_s=30.0, clock=lambda: now[0])
    reader = sealed(blob_world, reader_keys)
    ref = reader.put(SECRET, acme)
    data_keys(results, provider).shred(acme, actor="another host")
    assert reader.get(ref, acme) == SECRET  # its cached key, for up to cache_s
    now[0] = 30.5
    with pytest.raises(TenantShredded, match="another host"):
        reader.get(ref, acme)


def test_a_wrong_kek_is_a_configuration_error_naming_the_setting(
    results: ResultsStore, tmp_path: Path, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    url = f"file://{tmp_path / 'blobs'}"
    ref = open_blobs(url, results, LocalKeyProvider([kek()])).put(SECRET, acme)
    wrong = LocalKeyProvider([kek()])
    with pytest.raises(ConfigError, match=f"which {KEK_ENV} does not hold"):
        open_blobs(url, results, wrong).get(ref, acme)


def test_the_kek_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert key_provider_from_env({}) is None
    with pytest.raises(ConfigError, match="not base64"):
        key_provider_from_env({KEK_ENV: "not*base64"})
    with pytest.raises(ConfigError, match="16 bytes, not 32"):
        key_provider_from_env({KEK_ENV: base64.b64encode(os.urandom(16)).decode()})
    with pytest.raises(ConfigError, match="names no importable factory"):
        key_provider_from_env({"INFERSTREAM_KEY_PROVIDER": "nowhere.at_all:factory"})
    one, two = kek(), kek()
    setting = ",".join(base64.b64encode(k).decode() for k in (one, two))
    provider = key_provider_from_env({KEK_ENV: setting})
    assert provider is not None and provider.current_kek_id == kek_id_of(one)


def test_open_blobs_stores_in_the_clear_without_a_kek(
    results: ResultsStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEK_ENV, raising=False)
    monkeypatch.delenv("INFERSTREAM_KEY_PROVIDER", raising=False)
    blobs = open_blobs(f"file://{tmp_path / 'blobs'}", results)
    ref = blobs.put(SECRET, "acme")
    assert (tmp_path / "blobs" / content_key(ref.sha256, "acme")).read_bytes() == SECRET


def test_keys_commands_rotate_add_shred_and_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, store = str(APP.pipeline_path()), f"sqlite:///{tmp_path / 'results.db'}"
    old, new = kek(), kek()
    monkeypatch.setenv(KEK_ENV, base64.b64encode(old).decode())
    url = f"file://{tmp_path / 'blobs'}"
    with ResultsStore(store) as results:
        ref = open_blobs(url, results).put(SECRET, "acme")
    capsys.readouterr()

    monkeypatch.setenv(KEK_ENV, ",".join(base64.b64encode(k).decode() for k in (new, old)))
    assert main(["keys", "status", pipeline, "--store", store]) == 0
    assert "wrapped by older KEK" in capsys.readouterr().out
    assert main(["keys", "rotate-kek", pipeline, "--store", store]) == 0
    assert f"rewrapped 1 data keys under {kek_id_of(new)}" in capsys.readouterr().out
    assert main(["keys", "new-data-key", pipeline, "--store", store, "acme"]) == 0
    assert "data key 2" in capsys.readouterr().out
    monkeypatch.setenv(KEK_ENV, base64.b64encode(new).decode())  # the old KEK dropped
    with ResultsStore(store) as results:
        assert open_blobs(url, results).get(ref, "acme") == SECRET

    assert main(["keys", "shred", pipeline, "--store", store, "acme", "--confirm", "acme2"]) == 2
    assert "confirm with --confirm acme" in capsys.readouterr().err
    shred = ["keys", "shred", pipeline, "--store", store, "acme", "--confirm", "acme"]
    assert main([*shred, "--reason", "TICKET-7"]) == 0
    assert "2 data keys deleted" in capsys.readouterr().out
    assert main(["keys", "status", pipeline, "--store", store]) == 0
    assert "acme: shredded" in capsys.readouterr().out
    with ResultsStore(store) as results, pytest.raises(TenantShredded):
        open_blobs(url, results).get(ref, "acme")
    assert main(["audit", "export", pipeline, "--store", store, "--tenant", "acme"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["action"] for e in entries] == ["cli keys new-data-key", "cli keys shred"]
    assert "TICKET-7" in entries[1]["target"]
    assert main(["audit", "export", pipeline, "--store", store]) == 0  # the deployment's chain
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["action"] for e in entries] == ["cli keys rotate-kek"]
    assert kek_id_of(new) in entries[0]["target"]


def test_keys_commands_need_a_kek(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEK_ENV, raising=False)
    monkeypatch.delenv("INFERSTREAM_KEY_PROVIDER", raising=False)
    store = f"sqlite:///{tmp_path / 'results.db'}"
    assert main(["keys", "status", str(APP.pipeline_path()), "--store", store]) == 2
    assert f"set {KEK_ENV}" in capsys.readouterr().err


def test_a_sealed_blob_is_bound_to_its_key_within_the_tenant(
    results: ResultsStore, tmp_path: Path, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    root = tmp_path / "blobs"
    blobs = open_blobs(f"file://{root}", results, LocalKeyProvider([kek()]))
    first = blobs.put_at("a/one.bin", b"first" * 50, acme)
    blobs.put_at("a/two.bin", b"second" * 50, acme)
    (root / acme / "a/one.bin").write_bytes((root / acme / "a/two.bin").read_bytes())
    with pytest.raises(BlobError, match="moved from another tenant or key"):
        blobs.get(first, acme)


def test_registered_models_are_sealed_and_load(results: ResultsStore, tmp_path: Path) -> None:
    from inferstream.application import find_model
    from inferstream.registry import GLOBAL_FOLDER, ModelRegistry

    shipped = find_model("egg_sexing")
    assert shipped is not None
    graph = (shipped / "egg_sexing.onnx").read_bytes()
    blobs = open_blobs(f"file://{tmp_path / 'blobs'}", results, LocalKeyProvider([kek()]))
    registry = ModelRegistry(results, blobs)
    version = registry.register_files(shipped / "egg_sexing.onnx", actor="ops", reason="t")
    stored = [p for p in (tmp_path / "blobs" / GLOBAL_FOLDER).rglob("*") if p.is_file()]
    assert stored and all(graph[100:164] not in p.read_bytes() for p in stored)
    where = stored[0].relative_to(tmp_path / "blobs").as_posix()
    ref = BlobRef(uri=f"{blobs.url}/{where}", sha256=version.sha256, size=version.size)
    assert blobs.get(ref, GLOBAL_FOLDER) == graph  # as registry.load reads it
