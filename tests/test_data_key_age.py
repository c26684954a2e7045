"""Housekeeping's new data keys by age, on SQLite and PostgreSQL: a tenant whose newest
key is too old gets the next one with an audit entry; a fresh or shredded one gets none;
old blobs still open and new ones are sealed with the new key."""

from __future__ import annotations

import base64
import json
import os
import uuid
from pathlib import Path

import pytest
from blob_worlds import LocalWorld

from inferstream.apps.eggs import APP
from inferstream.blob_crypto import HEADER, BlobCipher
from inferstream.blobs import content_key, open_blob_store
from inferstream.bus import open_bus
from inferstream.envelope import now_us
from inferstream.errors import ConfigError
from inferstream.key_provider import KEK_ENV, key_provider_from_env
from inferstream.pipeline import load_pipeline
from inferstream.runner import ensure_topics, housekeep
from inferstream.store import ResultsStore
from inferstream.store.audit import AUDIT_KEY_ENV, AuditLog
from inferstream.store.blob_keys import BlobKeyTable
from inferstream.store.data_key_age import (
    ACTION,
    DAY_US,
    MAX_DAYS,
    MAX_DAYS_ENV,
    max_age_days,
    renew_data_keys,
)
from inferstream.store.data_keys import DataKeys


@pytest.fixture(autouse=True)
def kek(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEK_ENV, base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv(AUDIT_KEY_ENV, "test audit key")
    monkeypatch.delenv(MAX_DAYS_ENV, raising=False)


def keys_made(store: ResultsStore, days_ago: float) -> DataKeys:
    """The store's data keys, uncached, making new ones as if ``days_ago`` days ago."""
    provider = key_provider_from_env()
    assert provider is not None
    when = lambda: now_us() - int(days_ago * DAY_US)  # noqa: E731
    return DataKeys(BlobKeyTable(store), provider, cache_s=0, made_at_us=when)


def renewals(store: ResultsStore, tenant: str) -> list[dict[str, object]]:
    entries = AuditLog(store, None).entries(tenant)
    return [
        {"actor": e.entry.actor, **json.loads(e.entry.target)}
        for e in entries
        if e.entry.action == ACTION
    ]


def test_an_old_key_is_replaced_with_an_audit_entry_and_fresh_or_shredded_ones_are_not(
    store_url: str, tenants: tuple[str, str], tmp_path: Path
) -> None:
    old, fresh = tenants
    shredded = f"gone-{uuid.uuid4().hex[:8]}"
    world = LocalWorld(tmp_path / "blobs")
    with ResultsStore(store_url) as store:
        ten_days_ago, today = keys_made(store, 10), keys_made(store, 0)
        blobs = open_blob_store(world.store.url, BlobCipher(ten_days_ago))
        before = blobs.put(b"sealed before", old)
        ten_days_ago.sealing_key(shredded)
        ten_days_ago.shred(shredded, actor="test")
        today.sealing_key(fresh)

        lines = renew_data_keys(store_url)

        assert lines == [
            f"data keys: {old} got data key 2 (its newest was 10.0 days old, over {MAX_DAYS_ENV}=7)"
        ]
        table = BlobKeyTable(store)
        assert [k.version for k in table.of_tenant(old)] == [1, 2]
        assert [k.version for k in table.of_tenant(fresh)] == [1]
        assert table.newest(shredded) is None
        assert renewals(store, old) == [{"actor": "housekeeping", "version": 2, "max_days": 7.0}]
        assert renewals(store, fresh) == renewals(store, shredded) == []
        assert AuditLog(store, b"test audit key").verify(old).ok

        assert blobs.get(before, old) == b"sealed before"
        after = blobs.put(b"sealed after", old)
        stored = world.raw(content_key(after.sha256, old))
        assert stored is not None and HEADER.unpack_from(stored)[2] == 2
        assert blobs.get(after, old) == b"sealed after"
        assert renew_data_keys(store_url) == []  # the new key is fresh


def test_the_age_counts_from_the_given_time_and_the_next_seal_uses_the_new_key(
    store_url: str, tenants: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    acme, _ = tenants
    monkeypatch.setenv(MAX_DAYS_ENV, "0.5")
    with ResultsStore(store_url) as store:
        keys = keys_made(store, 0)
        keys.sealing_key(acme)
        assert renew_data_keys(store_url, at_us=now_us() + DAY_US // 4) == []
        assert len(renew_data_keys(store_url, at_us=now_us() + DAY_US)) == 1
        assert keys.sealing_key(acme)[0] == 2
        assert renewals(store, acme) == [{"actor": "housekeeping", "version": 2, "max_days": 0.5}]


def test_without_encryption_nothing_is_made(
    store_url: str, tenants: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with ResultsStore(store_url) as store:
        keys_made(store, 30).sealing_key(tenants[0])
    monkeypatch.delenv(KEK_ENV)
    assert renew_data_keys(store_url) == []


@pytest.mark.parametrize("setting", ["0", "-1", "abc", "nan", "inf", "7 days"])
def test_a_bad_max_age_is_a_config_error_naming_the_setting(
    setting: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(MAX_DAYS_ENV, setting)
    with pytest.raises(ConfigError, match=f"{MAX_DAYS_ENV}=.*set it to"):
        renew_data_keys(f"sqlite:///{tmp_path / 'never.db'}")
    assert not (tmp_path / "never.db").exists()


def test_the_max_age_defaults_to_a_week_and_takes_fractions() -> None:
    assert max_age_days({}) == MAX_DAYS == 7.0
    assert max_age_days({MAX_DAYS_ENV: " 0.25 "}) == 0.25


def test_housekeeping_gives_the_new_keys_with_its_other_chores(
    tenants: tuple[str, str], tmp_path: Path
) -> None:
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}",
        store=f"sqlite:///{tmp_path / 'store.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )
    with ResultsStore(spec.store) as store:
        keys_made(store, 8).sealing_key(tenants[0])
    bus = open_bus(spec.bus)
    try:
        ensure_topics(bus, spec)
    finally:
        bus.close()
    done = housekeep(spec)
    assert f"data keys: {tenants[0]} got data key 2 (its newest was 8.0 days old, over " in (
        "\n".join(done)
    )
