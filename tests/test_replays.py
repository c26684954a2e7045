"""Live replay: the board of requests, the workers' watch, and the admin's side end to end.

The board runs on SQLite and on PostgreSQL (a fresh schema per test). The end-to-end
tests use real buses and a stand-in worker thread with a real consumer that does what
a worker does when a replay is requested: leave the group, wait, come back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from inferstream.bus import Bus, Message, Record, SeekToTimestamp, open_bus
from inferstream.dataflow.state_store import StateStore
from inferstream.dataflow.task import TaskState
from inferstream.errors import StoreError
from inferstream.replays import NoReplays, ReplayBoard, ReplayWatch, ReplayWatcher
from inferstream.stage_replay import (
    ReplayNotApplied,
    describe_target,
    replay_stage,
    replay_stage_in_store,
)

DEADLINE_S = 30.0


def wait_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def board(store_url: str) -> Iterator[ReplayBoard]:
    opened = ReplayBoard(store_url)
    try:
        yield opened
    finally:
        opened.close()


# -- the board -----------------------------------------------------------------------


def test_requests_are_numbered_per_group_and_marked_applied(board: ReplayBoard) -> None:
    assert board.latest("p.a") is None
    assert board.request("p.a", ["raw", "side"], "earliest") == 1
    assert board.request("p.a", ["raw"], "offset 7") == 2
    assert board.request("p.b", ["raw"], "latest") == 1
    latest = board.latest("p.a")
    assert latest is not None
    assert (latest.generation, latest.target, latest.topics, latest.applied) == (
        2, "offset 7", ("raw",), False,
    )  # fmt: skip
    board.mark_applied("p.a", 1)  # an older request: the newest stays pending
    assert board.latest("p.a") == latest
    board.mark_applied("p.a", 2)
    applied = board.latest("p.a")
    assert applied is not None and applied.applied
    other = board.latest("p.b")
    assert other is not None and not other.applied


def test_boards_opened_and_asked_at_once_never_share_a_generation(store_url: str) -> None:
    generations: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def admin() -> None:
        try:
            start.wait()
            board = ReplayBoard(store_url)  # the table is created by whoever comes first
            try:
                generations.append(board.request("p.s", ["raw"], "earliest"))
            finally:
                board.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=admin) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert errors == []
    assert sorted(generations) == [1, 2, 3, 4, 5, 6]


def test_an_unreachable_database_is_a_store_error() -> None:
    # Opening asks nothing of the database: a worker starts during a store outage.
    board = ReplayBoard("postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    with pytest.raises(StoreError, match="check that the database is reachable"):
        board.latest("p.s")


def test_a_database_lost_after_opening_is_a_store_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    board = ReplayBoard(url)
    try:
        assert board.latest("p.s") is None  # the first use makes the table
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE stage_replays"))
        engine.dispose()
        with pytest.raises(StoreError, match="stage_replays"):
            board.latest("p.s")
        with pytest.raises(StoreError):
            board.request("p.s", ["raw"], "earliest")
    finally:
        board.close()


# -- the workers' watch --------------------------------------------------------------


def test_a_request_applied_before_the_watch_started_never_triggers(board: ReplayBoard) -> None:
    board.mark_applied("p.s", board.request("p.s", ["raw"], "earliest"))
    watch = ReplayWatch(board, "p.s", check_every_s=0)
    assert not watch.requested()
    board.request("p.s", ["raw"], "latest")
    assert watch.requested()
    assert watch.requested()  # until it is handled


def test_a_request_pending_when_the_watch_starts_triggers_it(board: ReplayBoard) -> None:
    board.request("p.s", ["raw"], "earliest")
    assert ReplayWatch(board, "p.s", check_every_s=3600).requested()


def test_the_watch_asks_the_board_at_most_every_check_interval(board: ReplayBoard) -> None:
    watch = ReplayWatch(board, "p.s", check_every_s=3600)
    board.request("p.s", ["raw"], "earliest")
    assert not watch.requested()  # asked at start; the next ask is an hour away
    assert ReplayWatch(board, "p.s", check_every_s=3600).requested()


def test_wait_applied_returns_once_the_request_is_applied(board: ReplayBoard) -> None:
    generation = board.request("p.s", ["raw"], "earliest")
    watch = ReplayWatch(board, "p.s", check_every_s=0)
    assert watch.requested()
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(watch.wait_applied(threading.Event())))
    waiter.start()
    board.mark_applied("p.s", generation)
    waiter.join(DEADLINE_S)
    assert outcome == [True]
    assert not watch.requested()


def test_wait_applied_gives_up_on_stop_or_timeout(board: ReplayBoard) -> None:
    board.request("p.s", ["raw"], "earliest")
    watch = ReplayWatch(board, "p.s", check_every_s=0)
    assert watch.requested()
    stop = threading.Event()
    stop.set()
    assert watch.wait_applied(stop) is False
    assert watch.requested()  # stopping is no answer: the request still stands
    assert watch.wait_applied(threading.Event(), timeout_s=0.3) is False
    assert not watch.requested()  # given up: it resumes and is not asked again
    board.request("p.s", ["raw"], "latest")
    assert watch.requested()  # but a newer request is


def test_a_store_outage_reads_as_no_replay_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    board = ReplayBoard(url)
    try:
        board.request("p.s", ["raw"], "earliest")
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE stage_replays"))
        engine.dispose()
        with caplog.at_level(logging.WARNING, logger="inferstream.replays"):
            watch = ReplayWatch(board, "p.s", check_every_s=0)  # starting needs no board
            assert not watch.requested()
            assert not watch.requested()
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "cannot check for replays of group p.s" in warnings[0]
        with closing(ReplayBoard(url)) as again:  # the table is back, empty
            again.request("p.s", ["raw"], "latest")
        assert watch.requested()
    finally:
        board.close()


def test_no_replays_is_never_requested() -> None:
    watchers: list[ReplayWatcher] = [NoReplays()]
    assert [w.requested() for w in watchers] == [False]
    assert NoReplays().wait_applied(threading.Event()) is True


def test_targets_are_described_as_people_write_them() -> None:
    assert describe_target("earliest") == "earliest"
    assert describe_target(12) == "offset 12"
    assert describe_target(SeekToTimestamp(1_767_225_600_000)) == "2026-01-01T00:00:00+00:00"


# -- the admin's side, end to end ----------------------------------------------------


class StandInWorker:
    """A worker's consume loop with a real consumer and a :class:`ReplayWatch`."""

    def __init__(self, bus: Bus, board: ReplayBoard, group: str, topic: str) -> None:
        self.seen: list[bytes] = []
        self.pauses = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._args = (bus, board, group, topic)
        self._thread = threading.Thread(target=self._run, name="stand-in-worker")
        self._thread.start()

    def _run(self) -> None:
        bus, board, group, topic = self._args
        try:
            watch = ReplayWatch(board, group, check_every_s=0.05)
            while not self._stop.is_set():
                consumer = bus.consumer(group, [topic])
                try:
                    while not self._stop.is_set() and not watch.requested():
                        self._consume(consumer.poll_batch(100, 0.1), consumer.commit)
                finally:
                    consumer.close()
                if not self._stop.is_set():
                    self.pauses += 1
                    watch.wait_applied(self._stop)
        except BaseException as exc:
            self.errors.append(exc)

    def _consume(self, batch: list[Message], commit: Callable[[list[Message]], None]) -> None:
        if batch:
            self.seen.extend(m.value for m in batch)
            commit(batch)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE_S)
        assert self.errors == []


def test_a_running_worker_pauses_and_rereads_from_the_target(
    bus: Bus, board: ReplayBoard, unique: Callable[[str], str]
) -> None:
    topic, group = unique("replay"), unique("p.stage")
    bus.create_topic(topic, partitions=2)
    sent = [b"m%02d" % i for i in range(20)]
    bus.produce(topic, [Record(b"k%d" % i, value) for i, value in enumerate(sent)])
    worker = StandInWorker(bus, board, group, topic)
    lines: list[str] = []
    resets: list[str] = []
    try:
        wait_until(lambda: len(worker.seen) == 20, "the first reading")
        outcome = replay_stage(
            bus, board, resets.append, group=group, topics=[topic], target="earliest",
            timeout_s=DEADLINE_S, progress=lines.append,
        )  # fmt: skip
        wait_until(lambda: len(worker.seen) >= 40, "the second reading")
        bus.produce(topic, [Record(b"k", b"after")])
        wait_until(lambda: worker.seen[-1:] == [b"after"], "a message after the replay")
    finally:
        worker.stop()
    assert sorted(worker.seen[20:40]) == sent
    assert len(worker.seen) == 41 and worker.pauses == 1
    assert resets == [group]
    assert (outcome.group, outcome.topics, outcome.target) == (group, (topic,), "earliest")
    latest = board.latest(group)
    assert latest is not None and latest.applied and latest.generation == outcome.generation
    assert lines[0].startswith(f"asked the workers of group {group} to pause")
    assert lines[-1] == f"done: the workers of group {group} resume from earliest"


def test_a_member_that_does_not_leave_moves_nothing(
    tmp_path: Path, board: ReplayBoard, unique: Callable[[str], str]
) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    topic, group = unique("stuck"), unique("p.stage")
    bus.create_topic(topic)
    bus.produce(topic, [Record(None, b"v%d" % i) for i in range(5)])
    old_worker = bus.consumer(group, [topic])  # no watch: it never hears the request
    try:
        got: list[Message] = []

        def read_all() -> bool:
            got.extend(old_worker.poll_batch(10, 0.1))
            return len(got) == 5

        wait_until(read_all, "the 5 messages")
        old_worker.commit(got)
        resets: list[str] = []
        with pytest.raises(ReplayNotApplied, match=r"1 member\(s\).*nothing was moved"):
            replay_stage(
                bus, board, resets.append, group=group, topics=[topic], target="earliest",
                timeout_s=0.3,
            )  # fmt: skip
        assert [p.committed for p in bus.partitions(topic, group)] == [5]
        assert resets == []
        latest = board.latest(group)
        assert latest is not None and latest.applied  # the workers that left resume
    finally:
        old_worker.close()
        bus.close()


def test_offsets_that_cannot_move_say_what_did(
    tmp_path: Path, board: ReplayBoard, unique: Callable[[str], str]
) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    try:
        topic, group = unique("real"), unique("p.stage")
        bus.create_topic(topic)
        with pytest.raises(ReplayNotApplied, match=f"only {topic} moved"):
            replay_stage(
                bus, board, lambda _group: None, group=group,
                topics=[topic, unique("missing")], target="earliest", timeout_s=0.3,
            )  # fmt: skip
        latest = board.latest(group)
        assert latest is not None and latest.applied
    finally:
        bus.close()


def test_replay_in_store_resets_the_stage_state(
    tmp_path: Path, store_url: str, unique: Callable[[str], str]
) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    state = StateStore(store_url)
    try:
        topic, group = unique("stateful"), unique("p.stage")
        bus.create_topic(topic)
        task = TaskState(group, 0)
        task.put("window", [1, 2])
        state.commit(task)
        assert state.groups() == [group]
        outcome = replay_stage_in_store(
            bus, store_url, group=group, topics=[topic], target=3, progress=lambda _line: None
        )
        assert outcome.target == "offset 3"
        assert state.groups() == []
        with closing(ReplayBoard(store_url)) as board:
            latest = board.latest(group)
        assert latest is not None and latest.applied and latest.topics == (topic,)
    finally:
        state.close()
        bus.close()
