"""The state store: round trips, fencing of stale owners, racing writers, metrics.

Every test runs on a SQLite file and on a private PostgreSQL schema.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from inferstream.dataflow.state_store import StateStore, UnserialisableState
from inferstream.dataflow.task import TaskState
from inferstream.errors import FencedError, StoreError

GROUP = "windows"


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    opened = StateStore(store_url)
    try:
        yield opened
    finally:
        opened.close()


def _committed(store: StateStore, group: str, partition: int, **values: object) -> TaskState:
    task = store.load(group, partition)
    for key, value in values.items():
        task.put(key, value)
    store.commit(task)
    return task


def test_a_task_never_stored_loads_empty_at_version_zero(store: StateStore) -> None:
    task = store.load(GROUP, 3)
    assert (task.group, task.partition, task.version) == (GROUP, 3, 0)
    assert task.offsets == {}
    assert task.values == {}
    assert task.changes() == ({}, set())


def test_a_commit_round_trips_values_offsets_and_version(store: StateStore, store_url: str) -> None:
    task = store.load(GROUP, 1)
    task.put("count:a", 3)
    task.put("window:a", {"sum": 1.5, "items": ["x", None, True]})
    task.put("nothing", None)
    task.advance("scans", 41)
    task.advance("labels", 6)
    store.commit(task)
    assert task.version == 1
    assert task.changes() == ({}, set())

    reopened = StateStore(store_url)
    try:
        loaded = reopened.load(GROUP, 1)
    finally:
        reopened.close()
    assert loaded.version == 1
    assert loaded.offsets == {"scans": 42, "labels": 7}
    assert loaded.values == {
        "count:a": 3,
        "window:a": {"sum": 1.5, "items": ["x", None, True]},
        "nothing": None,
    }
    assert store.load(GROUP, 2).version == 0  # the other partition is another task


def test_deleted_keys_are_gone_after_the_commit(store: StateStore) -> None:
    _committed(store, GROUP, 0, keep=1, drop=2, empty=None)
    task = store.load(GROUP, 0)
    task.delete("drop")
    task.delete("empty")  # a stored null is deleted like any value
    task.put("keep", 10)
    store.commit(task)
    loaded = store.load(GROUP, 0)
    assert loaded.values == {"keep": 10}
    assert loaded.version == 2


def test_a_commit_without_value_changes_still_moves_offsets_and_version(
    store: StateStore,
) -> None:
    _committed(store, GROUP, 0, total=5)
    task = store.load(GROUP, 0)
    task.advance("scans", 99)
    store.commit(task)
    loaded = store.load(GROUP, 0)
    assert (loaded.version, loaded.offsets, loaded.values) == (2, {"scans": 100}, {"total": 5})


@pytest.mark.parametrize("stored_before", [False, True], ids=["first-commit", "later-commit"])
def test_a_stale_owner_is_fenced_and_writes_nothing(store: StateStore, stored_before: bool) -> None:
    if stored_before:
        _committed(store, GROUP, 4, total=1)
    new_owner = store.load(GROUP, 4)
    old_owner = store.load(GROUP, 4)
    new_owner.put("total", 2)
    new_owner.advance("scans", 10)
    store.commit(new_owner)

    old_owner.put("total", 99)
    old_owner.put("ghost", "from the fenced batch")
    old_owner.advance("scans", 500)
    with pytest.raises(FencedError, match=r"moved to another worker.*redone there"):
        store.commit(old_owner)

    loaded = store.load(GROUP, 4)
    assert loaded.version == new_owner.version
    assert loaded.values == {"total": 2}
    assert loaded.offsets == {"scans": 11}
    assert old_owner.changes()[0] == {"total": 99, "ghost": "from the fenced batch"}


def test_racing_commits_of_one_version_never_both_succeed(store_url: str) -> None:
    stores = [StateStore(store_url), StateStore(store_url)]
    start = threading.Barrier(2)

    def commit(store: StateStore, task: TaskState) -> str:
        start.wait(timeout=30)
        try:
            store.commit(task)
        except FencedError:
            return "fenced"
        return "committed"

    try:
        with ThreadPoolExecutor(2) as pool:
            for round_ in range(8):
                racers = [store.load(GROUP, 0) for store in stores]
                assert {task.version for task in racers} == {round_}
                for name, task in zip("ab", racers, strict=True):
                    task.put("winner", name)
                outcomes = list(pool.map(commit, stores, racers))
                assert sorted(outcomes) == ["committed", "fenced"]
                winner = "ab"[outcomes.index("committed")]
                loaded = stores[0].load(GROUP, 0)
                assert (loaded.version, loaded.values["winner"]) == (round_ + 1, winner)
    finally:
        for store in stores:
            store.close()


WORKERS = 2
WINS_EACH = 15


def _increment_until_won(url: str, worker: int) -> None:
    """Add one to a counter WINS_EACH times, reloading whenever another worker won."""
    store = StateStore(url)
    try:
        wins = attempts = 0
        while wins < WINS_EACH:
            attempts += 1
            if attempts > 50 * WINS_EACH:  # a store that fences everyone must fail, not hang
                raise AssertionError(f"worker {worker} won {wins} of {attempts} commits")
            task = store.load(GROUP, 0)
            task.put("counter", task.get("counter", 0) + 1)
            task.put(f"version-{task.version + 1}", worker)
            try:
                store.commit(task)
            except FencedError:
                continue
            wins += 1
    finally:
        store.close()


def test_worker_processes_sharing_a_task_lose_no_update(store: StateStore, store_url: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    workers = [
        spawn.Process(target=_increment_until_won, args=(store_url, w)) for w in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(timeout=120)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0] * WORKERS

    total = WORKERS * WINS_EACH
    loaded = store.load(GROUP, 0)
    assert (loaded.version, loaded.get("counter")) == (total, total)
    # One winner per version: a version won twice would have lost one of its marks.
    marks = [loaded.get(f"version-{v}") for v in range(1, total + 1)]
    assert sorted(marks) == sorted(w for w in range(WORKERS) for _ in range(WINS_EACH))


def test_reset_removes_the_tasks_of_one_group_only(store: StateStore) -> None:
    _committed(store, GROUP, 0, a=1)
    stale = _committed(store, GROUP, 1, b=2)
    _committed(store, "joins", 0, c=3)

    assert store.reset(GROUP) == 2
    assert store.load(GROUP, 0).values == {}
    assert store.load(GROUP, 1).version == 0
    assert store.load("joins", 0).values == {"c": 3}
    assert store.size(GROUP) == (0, 0)
    assert store.reset(GROUP) == 0

    stale.put("b", 3)
    with pytest.raises(FencedError):
        store.commit(stale)  # an owner from before the reset cannot write into the replay


def test_size_counts_the_keys_and_json_bytes_of_a_group(store: StateStore) -> None:
    _committed(store, GROUP, 0, a={"n": [1, 2]}, b="x")  # {"n":[1,2]} and "x": 11 + 3 bytes
    _committed(store, GROUP, 1, c=True)  # true: 4 bytes
    _committed(store, "other", 0, d=12345)
    assert store.size(GROUP) == (3, 18)
    assert store.size("other") == (1, 5)
    assert store.size("unknown") == (0, 0)


def test_groups_lists_the_groups_with_stored_tasks(store: StateStore) -> None:
    assert store.groups() == []
    _committed(store, "windows", 0)
    _committed(store, "windows", 1)
    _committed(store, "joins", 5)
    assert store.groups() == ["joins", "windows"]


def test_an_unserialisable_value_names_its_key_and_writes_nothing(store: StateStore) -> None:
    _committed(store, GROUP, 0, fine=1)
    task = store.load(GROUP, 0)
    task.put("fine", 2)
    task.put("bad", {1, 2})
    with pytest.raises(UnserialisableState, match=r"'bad'.*store dicts, lists"):
        store.commit(task)
    loaded = store.load(GROUP, 0)
    assert (loaded.version, loaded.values) == (1, {"fine": 1})


def test_stores_opened_at_once_all_find_their_tables(store_url: str) -> None:
    start = threading.Barrier(4)

    def open_and_commit(partition: int) -> int:
        start.wait(timeout=30)
        store = StateStore(store_url)
        try:
            return _committed(store, GROUP, partition, p=partition).version
        finally:
            store.close()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(open_and_commit, range(4))) == [1, 1, 1, 1]


def test_an_unreachable_database_is_a_store_error_without_the_password() -> None:
    # Port 1 refuses connections at once; nothing listens there.
    url = "postgresql://worker:s3cret@127.0.0.1:1/state"
    store = StateStore(url)  # opening asks nothing of the database yet
    with pytest.raises(StoreError, match=r"state store at .*worker:\*\*\*@127\.0\.0\.1:1") as info:
        store.load("g", 0)
    assert "s3cret" not in str(info.value)
    assert "reachable" in str(info.value)
