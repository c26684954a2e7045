"""Embedded-log tests beyond the conformance suite: real OS processes, kill -9, fencing,
retention and watermarks (which the Kafka test broker does not report exactly)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

import pytest
from wal_testing import frames_in_log, readers_never_stop

from inferstream.bus import (
    Bus,
    Message,
    Record,
    RetentionPolicy,
    TopicPartition,
    open_bus,
    partition_for,
)
from inferstream.errors import ConfigError, FencedError, UnknownTopicError

DEADLINE_S = 60.0

# Consumes until a stop file appears; commits partition by partition and records a
# message only once its commit succeeded, so the records count processed messages.
CONSUMER_CHILD = """
import pathlib, sys
from inferstream.bus import open_bus
from inferstream.errors import FencedError
url, topic, group, out, stop = sys.argv[1:]
bus = open_bus(url)
consumer = bus.consumer(group, [topic])
with open(out, "w") as f:
    while not pathlib.Path(stop).exists():
        batch = consumer.poll_batch(50, 0.05)
        for part in sorted({m.partition for m in batch}):
            mine = [m for m in batch if m.partition == part]
            try:
                consumer.commit(mine)
            except FencedError:
                continue
            f.write("".join(m.value.decode() + "\\n" for m in mine))
            f.flush()
consumer.close()
bus.close()
"""

PRODUCER_CHILD = """
import sys
from inferstream.bus import Record, open_bus
url, topic, name, count = sys.argv[1:]
bus = open_bus(url)
for start in range(0, int(count), 100):
    batch = [Record(b"%d" % (i % 7), f"{name}-{i}".encode()) for i in range(start, start + 100)]
    bus.produce(topic, batch)
    print("produced", flush=True)
bus.close()
"""

# Commits one batch, polls a second without committing, reports both, then hangs.
STALLING_CHILD = """
import json, sys, time
from inferstream.bus import open_bus
url, topic, group = sys.argv[1:]
consumer = open_bus(url).consumer(group, [topic])
first = consumer.poll_batch(10, 5.0)
consumer.commit(first)
second = consumer.poll_batch(10, 5.0)
print(json.dumps({"committed": [m.value.decode() for m in first],
                  "uncommitted": [m.value.decode() for m in second]}), flush=True)
time.sleep(600)
"""


@contextmanager
def child(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A Python child process running ``script``; killed on exit if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bus.db'}?session_timeout_s=1"


@pytest.fixture
def bus(url: str) -> Iterator[Bus]:
    opened = open_bus(url)
    try:
        yield opened
    finally:
        opened.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_processes_consume_every_message_exactly_once_when_they_commit(
    bus: Bus, url: str, tmp_path: Path
) -> None:
    bus.create_topic("jobs", partitions=4)
    stop = tmp_path / "stop"
    outs = [tmp_path / f"consumer-{i}.txt" for i in range(3)]
    with ExitStack() as stack:
        consumers = [
            stack.enter_context(child(CONSUMER_CHILD, url, "jobs", "workers", str(o), str(stop)))
            for o in outs
        ]
        # A consumer opens its output file once it has joined; produce after all
        # have, so that the work is shared.
        wait_for(lambda: all(o.exists() for o in outs), "the consumers to join")
        producers = [
            stack.enter_context(child(PRODUCER_CHILD, url, "jobs", f"p{i}", "1000"))
            for i in range(2)
        ]
        for producer in producers:
            assert producer.wait(timeout=DEADLINE_S) == 0
        try:
            wait_for(
                lambda: sum(p.committed or 0 for p in bus.partitions("jobs", "workers")) == 2000,
                "the group to commit all 2000 messages",
            )
        finally:
            stop.touch()
            codes = [c.wait(timeout=DEADLINE_S) for c in consumers]
    assert codes == [0, 0, 0]
    counts = Counter(line for out in outs for line in out.read_text().splitlines())
    expected = {f"p{n}-{i}" for n in range(2) for i in range(1000)}
    assert set(counts) == expected
    assert set(counts.values()) == {1}
    # Several processes did share the work.
    assert sum(1 for out in outs if out.read_text()) >= 2


def test_a_killed_members_partitions_are_taken_over_with_uncommitted_redelivered(
    bus: Bus, url: str
) -> None:
    bus.create_topic("scans", partitions=2)
    bus.produce("scans", [Record(b"k%d" % i, b"s%02d" % i) for i in range(40)])
    with child(STALLING_CHILD, url, "scans", "g") as stalled:
        assert stalled.stdout is not None
        report = json.loads(stalled.stdout.readline())
        os.kill(stalled.pid, signal.SIGKILL)
        stalled.wait()
    survivor = bus.consumer("g", ["scans"])
    got: list[Message] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < 30 and time.monotonic() < deadline:
        got.extend(survivor.poll_batch(100, 0.1))
    assert len(survivor.assignment()) == 2
    survivor.close()
    received = [m.value.decode() for m in got]
    assert len(report["committed"]) == len(report["uncommitted"]) == 10
    assert sorted(received) == sorted({f"s{i:02d}" for i in range(40)} - set(report["committed"]))
    assert set(report["uncommitted"]) <= set(received)


def test_a_member_that_lost_a_partition_is_fenced_on_commit(bus: Bus) -> None:
    bus.create_topic("t", partitions=2)
    bus.produce("t", [Record(None, b"m%d" % i) for i in range(10)])
    first = bus.consumer("g", ["t"])
    batch = first.poll_batch(100, 1.0)
    assert {m.partition for m in batch} == {0, 1}
    second = bus.consumer("g", ["t"])
    (lost,) = second.assignment()
    with pytest.raises(FencedError, match=rf"no longer owns t\[{lost.partition}\]"):
        first.commit(batch)
    committed = {p.partition: p.committed for p in bus.partitions("t", "g")}
    # The partition it kept is committed; the lost one is left to its new owner.
    assert committed[lost.partition] is None
    assert committed[1 - lost.partition] == 5
    assert first.assignment() == [TopicPartition("t", 1 - lost.partition)]
    redelivered = second.poll_batch(100, 1.0)
    assert [m.offset for m in redelivered] == [0, 1, 2, 3, 4]
    first.close()
    second.close()


def test_a_slow_batch_keeps_its_partitions(bus: Bus) -> None:
    """A member working on one batch for 3x the session timeout still owns its partitions:
    a background thread heartbeats for it, so the other member takes nothing over."""
    bus.create_topic("t", partitions=2)
    bus.produce("t", [Record(None, b"m%d" % i) for i in range(10)])
    slow = bus.consumer("g", ["t"])
    other = bus.consumer("g", ["t"])
    batch = slow.poll_batch(100, 1.0)  # after the split: its one partition's messages
    assert batch and len(slow.assignment()) == 1
    got: list[Message] = []
    until = time.monotonic() + 3.0  # the "work": 3 x the url fixture's 1 s timeout
    while time.monotonic() < until:
        got.extend(other.poll_batch(100, 0.05))
    assert len(other.assignment()) == 1
    assert {m.partition for m in got}.isdisjoint({m.partition for m in batch})
    slow.commit(batch)  # not fenced
    slow.close()
    other.close()


@pytest.mark.parametrize("url_options", ["session_timeout_s=1&max_poll_interval_s=1"])
def test_a_stalled_member_expires_and_is_fenced(tmp_path: Path, url_options: str) -> None:
    """A member that stops polling for longer than max_poll_interval_s stops heartbeating."""
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}?{url_options}")
    bus.create_topic("t", partitions=2)
    bus.produce("t", [Record(None, b"m%d" % i) for i in range(10)])
    stalling = bus.consumer("g", ["t"])
    batch = stalling.poll_batch(100, 1.0)
    other = bus.consumer("g", ["t"])
    stalling.poll_batch(100, 0.0)  # sees the split, then stops heartbeating
    assert len(stalling.assignment()) == 1
    got: list[Message] = []
    deadline = time.monotonic() + DEADLINE_S
    # Only the stalled member's expiry can give the other member both partitions.
    while len(other.assignment()) < 2 and time.monotonic() < deadline:
        got.extend(other.poll_batch(100, 0.05))
    got.extend(other.poll_batch(100, 0.5))
    assert len(other.assignment()) == 2
    with pytest.raises(FencedError):
        stalling.commit(batch)
    assert all(p.committed is None for p in bus.partitions("t", "g"))
    assert sorted(m.value for m in got) == sorted(b"m%d" % i for i in range(10))
    stalling.close()
    other.close()
    bus.close()


def test_a_late_member_that_nobody_replaced_keeps_its_partitions(bus: Bus) -> None:
    bus.create_topic("t")
    bus.produce("t", [Record(None, b"m%d" % i) for i in range(3)])
    alone = bus.consumer("g", ["t"])
    batch = alone.poll_batch(100, 1.0)
    time.sleep(1.5)  # longer than the 1 s session timeout of the url fixture
    alone.commit(batch)
    assert [p.committed for p in bus.partitions("t", "g")] == [3]
    alone.close()


def test_a_commit_rewrites_the_members_row_only_when_a_heartbeat_is_due(
    tmp_path: Path,
) -> None:
    """A commit's heartbeat is a page written to the log: a busy member beats once per
    quarter of the session timeout, not per batch."""
    database = tmp_path / "bus.db"
    bus = open_bus(f"sqlite:///{database}?session_timeout_s=60")
    bus.create_topic("t")
    bus.produce("t", [Record(None, b"m%d" % i) for i in range(4)])
    consumer = bus.consumer("g", ["t"])

    def expires_ms() -> int:
        with closing(sqlite3.connect(database)) as conn:
            (value,) = conn.execute("SELECT expires_ms FROM members").fetchone()
        return int(value)

    joined = expires_ms()
    for _ in range(2):
        batch = consumer.poll_batch(2, 1.0)
        time.sleep(0.01)  # a heartbeat now would move the expiry on
        consumer.commit(batch)
    assert expires_ms() == joined
    assert [p.committed for p in bus.partitions("t", "g")] == [4]
    consumer.close()
    bus.close()


def test_a_killed_producer_leaves_whole_batches_only(bus: Bus, url: str) -> None:
    bus.create_topic("t")
    with child(PRODUCER_CHILD, url, "t", "p", "100000") as producer:
        assert producer.stdout is not None
        for _ in range(3):
            assert producer.stdout.readline() == "produced\n"
        os.kill(producer.pid, signal.SIGKILL)
        producer.wait()
    (info,) = bus.partitions("t")
    # Every batch acknowledged before the kill is there, and no batch is half there.
    assert info.high >= 300
    assert info.high % 100 == 0


def test_watermarks_and_lag(bus: Bus) -> None:
    bus.create_topic("t", partitions=2)
    assert (partition_for(b"a", 2), partition_for(b"d", 2)) == (1, 0)
    bus.produce("t", [Record(b"a", b"x")] * 7 + [Record(b"d", b"y")] * 3)
    part_a = 1
    consumer = bus.consumer("g", ["t"])
    batch = [m for m in consumer.poll_batch(100, 1.0) if m.partition == part_a][:4]
    consumer.commit(batch)
    consumer.close()
    infos = {p.partition: p for p in bus.partitions("t", "g")}
    assert (infos[part_a].low, infos[part_a].high, infos[part_a].committed) == (0, 7, 4)
    assert infos[part_a].lag == 3
    assert (infos[1 - part_a].high, infos[1 - part_a].committed) == (3, None)
    assert infos[1 - part_a].lag == 3


def test_retention_by_count_keeps_the_newest(bus: Bus) -> None:
    bus.create_topic("t")
    bus.produce("t", [Record(None, b"m%d" % i) for i in range(10)])
    assert bus.apply_retention("t", RetentionPolicy(max_messages=4)) == 6
    assert bus.apply_retention("t", RetentionPolicy(max_messages=4)) == 0
    (info,) = bus.partitions("t")
    assert (info.low, info.high) == (6, 10)
    consumer = bus.consumer("g", ["t"])
    assert [m.offset for m in consumer.poll_batch(100, 1.0)] == [6, 7, 8, 9]
    consumer.close()


def test_retention_deletes_a_large_prefix_in_chunks(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferstream.bus import embedded

    monkeypatch.setattr(embedded, "RETENTION_CHUNK", 7)
    bus.create_topic("t")
    bus.produce("t", [Record(None, b"m%d" % i) for i in range(50)])
    assert bus.apply_retention("t", RetentionPolicy(max_messages=10)) == 40
    (info,) = bus.partitions("t")
    assert (info.low, info.high) == (40, 50)


def test_retention_by_age_drops_old_messages(bus: Bus) -> None:
    bus.create_topic("t")
    old = int(time.time() * 1000) - 3_600_000
    bus.produce("t", [Record(None, b"old", old)] * 5 + [Record(None, b"new")] * 2)
    assert bus.apply_retention("t", RetentionPolicy(max_age_s=60)) == 5
    (info,) = bus.partitions("t", "g")
    assert (info.low, info.high, info.lag) == (5, 7, 2)
    consumer = bus.consumer("g", ["t"])
    assert [m.value for m in consumer.poll_batch(100, 1.0)] == [b"new", b"new"]
    consumer.close()


def test_keyless_records_spread_over_partitions(bus: Bus) -> None:
    bus.create_topic("t", partitions=3)
    bus.produce("t", [Record(None, b"x")] * 9)
    assert [p.high for p in bus.partitions("t")] == [3, 3, 3]


def test_url_creates_folders_and_rejects_bad_options(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b" / "bus.db"
    open_bus(f"sqlite:///{nested}").close()
    assert nested.exists()
    with pytest.raises(ConfigError, match="session_timeout_s"):
        open_bus(f"sqlite:///{nested}?session_timout_s=1")
    with pytest.raises(ConfigError, match="max_poll_interval_s must be > 0"):
        open_bus(f"sqlite:///{nested}?max_poll_interval_s=0")
    with pytest.raises(UnknownTopicError, match="create_topic"):
        open_bus(f"sqlite:///{nested}").consumer("g", ["missing"])


def test_the_log_starts_over_thoughreaders_never_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the soak: with some reader always in a transaction (every worker polls)
    SQLite never rewinds the write-ahead log, which grew to 13 GB in 50 minutes until
    the workers stalled. A producer writing flat out outruns the checkpointer thread;
    past the log's size limit it restarts the log itself, counting what it wrote since
    the thread's last look. Here the thread never looks (in CI its first look, copying
    100 MB on a busy disk, once outlasted the whole write and the log reached 336 MB)."""
    from inferstream.bus import embedded_checkpoint

    monkeypatch.setattr(embedded_checkpoint, "RESTART_AT_BYTES", 4 * 2**20)
    monkeypatch.setattr(embedded_checkpoint, "WAL_MAX_BYTES", 64 * 2**20)
    monkeypatch.setattr(embedded_checkpoint, "CHECKPOINT_EVERY_S", 3600.0)
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_topic("t", 2)
    try:
        with readers_never_stop(tmp_path / "bus.db"):
            payload = os.urandom(16_000)
            for i in range(1500):  # 240 MB through the log
                bus.produce("t", [Record(str(i).encode(), payload) for _ in range(10)])
            log_mb = frames_in_log(tmp_path / "bus.db") * 16_384 / 2**20
    finally:
        bus.close()
    assert log_mb < 120, f"the log grew to {log_mb:.0f} MB"  # 64 MB, then 0.2 s more


def test_the_checkpointer_thread_starts_the_log_over_at_a_steady_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a rate the file keeps up with, the producer's checkpointer thread alone
    copies the log into the file and starts it over (readers always in a transaction):
    the producer never checkpoints on its own path."""

    from inferstream.bus import embedded_checkpoint

    monkeypatch.setattr(embedded_checkpoint, "RESTART_AT_BYTES", 4 * 2**20)
    monkeypatch.setattr(embedded_checkpoint, "RESTART_ESCALATE_AFTER", 2)  # readers never stop
    monkeypatch.setattr(embedded_checkpoint, "WAL_MAX_BYTES", 2**40)  # never the producer
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_topic("t", 2)
    pages = 0
    try:
        with readers_never_stop(tmp_path / "bus.db"):
            payload = os.urandom(12_000)
            for i in range(150):  # 1.5 s at ~12 MB/s, one page per message
                bus.produce("t", [Record(str(i).encode(), payload) for _ in range(10)])
                pages += 10
                time.sleep(0.01)
        in_log = frames_in_log(tmp_path / "bus.db")
    finally:
        bus.close()
    # Started over at 4 MB (256 pages); without restarts the log would hold every page
    # and the commits' own: ~2,100.
    assert in_log < pages, f"{in_log} frames in the log after {pages} pages written"
