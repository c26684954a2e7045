"""Guessing passwords and key secrets earns a back-off: 429 with Retry-After, shared by
every API process through the store, never a permanent lockout (issue 11, finding 3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_testing import World, start_world
from fastapi.testclient import TestClient
from test_api_auth import PASSWORD, login, make_user

from inferstream.api import ApiSettings
from inferstream.api.accounts import Accounts
from inferstream.api.throttle import Backoff, GuessThrottle
from inferstream.store import ResultsStore

SECOND = 1_000_000


def wrong_key(world: World, tenant: str, role: str) -> str:
    prefix, tenant_part, key_id, _ = world.keys[(tenant, role)].split(".")
    return f"{prefix}.{tenant_part}.{key_id}.{'x' * 43}"


def test_wrong_passwords_for_one_user_earn_a_429_even_for_the_right_one(world: World) -> None:
    username = make_user(world)
    codes = [login(world, username, "wrong password!").status_code for _ in range(7)]  # type: ignore[attr-defined]
    assert codes == [401] * 6 + [429]
    refused = login(world, username, PASSWORD)
    assert refused.status_code == 429  # type: ignore[attr-defined]
    assert int(refused.headers["Retry-After"]) >= 1  # type: ignore[attr-defined]
    # Another account from the same address is not held back.
    world.client.post(
        "/v1/admin/users",
        json={"username": "bob", "password": PASSWORD, "role": "viewer"},
        headers=world.headers(world.own, "admin"),
    )
    assert login(world, f"{world.own}/bob", PASSWORD).status_code == 200  # type: ignore[attr-defined]


def test_wrong_secrets_for_one_key_earn_a_429_but_the_right_key_still_works(
    world: World,
) -> None:
    bad = {"X-API-Key": wrong_key(world, world.own, "viewer")}
    codes = [world.client.get("/v1/whoami", headers=bad).status_code for _ in range(8)]
    assert codes[:6] == [401] * 6 and codes[6:] == [429, 429]
    limited = world.client.get("/v1/whoami", headers=bad)
    assert int(limited.headers["Retry-After"]) >= 1
    good = world.client.get("/v1/whoami", headers=world.headers(world.own, "viewer"))
    assert good.status_code == 200  # nobody can lock a machine out by knowing its key id


def test_one_address_guessing_many_accounts_is_held_back_but_others_are_not(
    world: World,
) -> None:
    username = make_user(world)
    for number in range(21):  # one guess each at 21 different accounts
        answer = login(world, f"{world.own}/user{number}", "wrong password!")
        assert answer.status_code == 401  # type: ignore[attr-defined]
    assert login(world, username, PASSWORD).status_code == 429  # type: ignore[attr-defined]
    elsewhere = TestClient(world.client.app, client=("192.0.2.7", 50000))
    form = {"username": username, "password": PASSWORD}
    assert elsewhere.post("/auth/token", data=form).status_code == 200


@pytest.fixture
def two_processes(settings: ApiSettings) -> Iterator[tuple[World, World]]:
    """Two API apps on one store, as two ``serve`` processes would be."""
    first, second = start_world(settings), start_world(settings)
    yield next(first), next(second)
    for rest in (first, second):
        next(rest, None)


def test_failures_are_counted_across_api_processes(two_processes: tuple[World, World]) -> None:
    one, two = two_processes
    username = make_user(one)
    for world in (one, two, one, two, one, two):
        assert login(world, username, "wrong password!").status_code == 401  # type: ignore[attr-defined]
    assert login(one, username, PASSWORD).status_code == 429  # type: ignore[attr-defined]
    assert login(two, username, PASSWORD).status_code == 429  # type: ignore[attr-defined]


# -- the back-off itself, on a real store with a clock the test moves ----------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * SECOND

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def throttle(tmp_path: Path) -> Iterator[tuple[GuessThrottle, Clock]]:
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    clock = Clock()
    policy = Backoff(free_failures=2, first_s=1, max_s=8, forget_after_s=60)
    yield GuessThrottle(Accounts(store), source=policy, account=policy, clock_us=clock), clock
    store.close()


def blocked_for(throttle: GuessThrottle, clock: Clock, scope: str) -> float:
    return max(0, throttle.standing(scope).get(scope, 0) - clock()) / SECOND


def test_back_off_doubles_is_capped_and_ends(throttle: tuple[GuessThrottle, Clock]) -> None:
    guard, clock = throttle
    waits = []
    for _ in range(7):
        guard.failed("source:a", "user:t/u")
        waits.append(blocked_for(guard, clock, "user:t/u"))
    assert waits == [0, 0, 1, 2, 4, 8, 8]  # two free, then doubling, capped at 8 s
    clock.now += 8 * SECOND
    guard.refuse_if_blocked(guard.standing("user:t/u"), "user:t/u")  # over: no lockout


def test_a_quiet_hour_forgets_and_a_success_clears_the_account_only(
    throttle: tuple[GuessThrottle, Clock],
) -> None:
    guard, clock = throttle
    for _ in range(4):
        guard.failed("source:a", "user:t/u")
    clock.now += 61 * SECOND  # past forget_after_s: the next failure counts from one
    guard.failed("source:a", "user:t/u")
    assert blocked_for(guard, clock, "user:t/u") == 0
    guard.failed("source:a", "user:t/u")
    guard.failed("source:a", "user:t/u")
    assert blocked_for(guard, clock, "user:t/u") == 1
    guard.succeeded("user:t/u", guard.standing("user:t/u"))
    assert guard.standing("user:t/u") == {}
    assert blocked_for(guard, clock, "source:a") == 1  # the source keeps its count
    clock.now += 3600 * SECOND
    assert guard.purge() == 1
    assert guard.standing("source:a") == {}


def test_a_clean_key_is_not_looked_up_again_for_a_second(
    throttle: tuple[GuessThrottle, Clock],
) -> None:
    guard, clock = throttle
    scopes = ("source:a", "key:t/k")
    assert guard.standing_cached(*scopes) == {}
    # Another process's failures land in the store; this one trusts its memory a second.
    other = GuessThrottle(guard.accounts, source=guard.source, account=guard.account,
                          clock_us=clock)  # fmt: skip
    for _ in range(4):  # two free, then 1 s, then 2 s of back-off
        other.failed(*scopes)
    assert guard.standing_cached(*scopes) == {}
    clock.now += SECOND
    assert guard.standing_cached(*scopes)["key:t/k"] > clock.now  # seen within the second
    # A failure in this process is seen at once.
    clock.now += 9 * SECOND
    fresh = ("source:b", "key:t/other")
    assert guard.standing_cached(*fresh) == {}
    for _ in range(4):
        guard.failed(*fresh)
    assert guard.standing_cached(*fresh)["key:t/other"] > clock.now
