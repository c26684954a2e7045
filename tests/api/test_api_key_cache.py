"""API keys kept in memory for a second: what a revocation elsewhere costs, and what not.

The cache runs on a real SQLite store; the clock is the test's, so "a second later"
is exact rather than slept.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_testing import World, dicom_bytes
from test_api_guessing import SECOND, Clock

from inferstream.api.accounts import Accounts
from inferstream.api.auth import issue_key
from inferstream.api.key_cache import KeyCache
from inferstream.store import ResultsStore


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Accounts]:
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    found = Accounts(store)
    found.create_tenant("acme")
    yield found
    store.close()


def test_a_key_revoked_elsewhere_is_seen_within_the_freshness_window(accounts: Accounts) -> None:
    clock = Clock()
    keys = KeyCache(accounts, fresh_for_us=SECOND, clock_us=clock)
    key_id = issue_key(accounts, "acme", "scanner", "device").key_id
    found = keys.find_key("acme", key_id)
    assert found is not None and not found.revoked

    accounts.revoke_key("acme", key_id)  # another process, e.g. `admin revoke-key`
    clock.now += SECOND - 1
    kept = keys.recent("acme", key_id)
    assert kept is not None and not kept.revoked  # the window the cache trades for speed
    clock.now += 1
    assert keys.recent("acme", key_id) is None
    reread = keys.find_key("acme", key_id)
    assert reread is not None and reread.revoked


def test_forgetting_a_key_reads_the_store_again_at_once(accounts: Accounts) -> None:
    clock = Clock()
    keys = KeyCache(accounts, fresh_for_us=SECOND, clock_us=clock)
    key_id = issue_key(accounts, "acme", "scanner", "device").key_id
    keys.find_key("acme", key_id)
    accounts.revoke_key("acme", key_id)

    keys.forget("acme", key_id)

    assert keys.recent("acme", key_id) is None
    found = keys.find_key("acme", key_id)
    assert found is not None and found.revoked


def test_a_key_not_found_is_not_kept(accounts: Accounts) -> None:
    keys = KeyCache(accounts, clock_us=Clock())
    assert keys.find_key("acme", "0123456789ab") is None
    assert keys.recent("acme", "0123456789ab") is None


def test_the_api_refuses_a_key_revoked_behind_its_back_once_the_window_passed(
    world: World,
) -> None:
    services = world.client.app.state.services  # type: ignore[attr-defined]
    clock = Clock()
    services.keys.clock_us = clock
    issued = issue_key(services.accounts, world.own, "scanner", "device")
    upload = {"X-API-Key": issued.secret, "Content-Type": "application/dicom"}
    first = world.client.post("/v1/scans", content=dicom_bytes(seed=1), headers=upload)
    assert first.status_code == 202, first.text

    services.accounts.revoke_key(world.own, issued.key_id)  # as another process would
    within = world.client.post("/v1/scans", content=dicom_bytes(seed=2), headers=upload)
    clock.now += SECOND
    after = world.client.post("/v1/scans", content=dicom_bytes(seed=3), headers=upload)

    assert within.status_code == 202, within.text
    assert after.status_code == 401
    assert after.json()["detail"] == "API key is unknown or revoked"


def test_a_wrong_secret_for_a_key_in_memory_is_refused_and_counted(world: World) -> None:
    services = world.client.app.state.services  # type: ignore[attr-defined]
    issued = issue_key(services.accounts, world.own, "scanner", "device")
    good = {"X-API-Key": issued.secret, "Content-Type": "application/dicom"}
    assert (
        world.client.post("/v1/scans", content=dicom_bytes(seed=4), headers=good).status_code == 202
    )
    forged = {**good, "X-API-Key": issued.secret[:-4] + "AAAA"}

    answer = world.client.post("/v1/scans", content=dicom_bytes(seed=5), headers=forged)

    assert answer.status_code == 401
    standing = services.accounts.blocked_until([f"key:{world.own}/{issued.key_id}"])
    assert f"key:{world.own}/{issued.key_id}" in standing  # the failure is on record
