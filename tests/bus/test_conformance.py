"""The bus conformance suite: every backend (embedded log, Kafka) must pass it unchanged.

Kafka joins groups and rebalances far more slowly than the embedded log, so every
wait is a loop of short polls under a generous overall deadline; no test asserts on
speed. High watermarks and lag are asserted in the embedded-only tests, because the
tansu test broker reports high watermarks too low.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from inferstream.bus import (
    Bus,
    Consumer,
    Message,
    Record,
    SeekToTimestamp,
    TopicPartition,
    partition_for,
)

DEADLINE_S = 30.0
Unique = Callable[[str], str]


@contextmanager
def joined(
    bus: Bus, group: str, topics: list[str], start: Literal["earliest", "latest"] = "earliest"
) -> Iterator[Consumer]:
    consumer = bus.consumer(group, topics, start=start)
    try:
        yield consumer
    finally:
        consumer.close()


def poll_until(
    consumer: Consumer, done: Callable[[list[Message]], bool], *, commit: bool = False
) -> list[Message]:
    """Poll until ``done(everything so far)`` or the deadline; return everything polled."""
    got: list[Message] = []
    deadline = time.monotonic() + DEADLINE_S
    while not done(got) and time.monotonic() < deadline:
        batch = consumer.poll_batch(100, 0.2)
        if commit and batch:
            consumer.commit(batch)
        got.extend(batch)
    return got


def values(messages: list[Message]) -> list[bytes]:
    return [m.value for m in messages]


def numbered(count: int, start: int = 0, key: bytes | None = b"k") -> list[Record]:
    return [Record(key, b"m%04d" % i) for i in range(start, start + count)]


def has(count: int) -> Callable[[list[Message]], bool]:
    return lambda got: len(got) >= count


def test_create_topic_is_idempotent_and_keeps_partition_count(bus: Bus, unique: Unique) -> None:
    topic = unique("create")
    bus.create_topic(topic, partitions=3)
    bus.create_topic(topic, partitions=3)
    assert bus.topics()[topic] == 3
    assert [p.partition for p in bus.partitions(topic)] == [0, 1, 2]


def test_round_trip_keeps_keys_values_and_timestamps(bus: Bus, unique: Unique) -> None:
    topic = unique("roundtrip")
    bus.create_topic(topic, partitions=2)
    stamped = [Record(b"a", b"one", 1_700_000_000_000), Record(b"b", b"two", 1_700_000_001_234)]
    before = int(time.time() * 1000)
    bus.produce(topic, [*stamped, Record(None, b"keyless"), Record(b"c", b"")])
    with joined(bus, unique("g"), [topic]) as consumer:
        got = {m.value: m for m in poll_until(consumer, has(4))}
    assert set(got) == {b"one", b"two", b"keyless", b""}
    assert (got[b"one"].key, got[b"one"].timestamp_ms) == (b"a", 1_700_000_000_000)
    assert (got[b"two"].key, got[b"two"].timestamp_ms) == (b"b", 1_700_000_001_234)
    assert got[b"keyless"].key is None
    # The bus stamps records that carry no timestamp with the current time.
    assert abs(got[b"keyless"].timestamp_ms - before) < 600_000
    assert all(m.topic == topic for m in got.values())


def test_records_of_one_key_stay_in_order_in_their_partition(bus: Bus, unique: Unique) -> None:
    topic = unique("order")
    bus.create_topic(topic, partitions=4)
    keys = [b"key-%d" % k for k in range(8)]
    for round_ in range(4):
        bus.produce(
            topic,
            [Record(key, b"%s:%03d" % (key, round_ * 25 + i)) for i in range(25) for key in keys],
        )
    with joined(bus, unique("g"), [topic]) as consumer:
        got = poll_until(consumer, has(800))
    assert len(got) == 800
    for key in keys:
        mine = [m for m in got if m.key == key]
        assert {m.partition for m in mine} == {partition_for(key, 4)}
        assert [m.value for m in mine] == [b"%s:%03d" % (key, i) for i in range(100)]
        assert [m.offset for m in mine] == sorted(m.offset for m in mine)


def test_commit_survives_a_new_consumer_and_uncommitted_is_redelivered(
    bus: Bus, unique: Unique
) -> None:
    topic, group = unique("commit"), unique("g")
    bus.create_topic(topic)
    bus.produce(topic, numbered(10))
    with joined(bus, group, [topic]) as first:
        got = poll_until(first, has(10))
        assert values(got) == [b"m%04d" % i for i in range(10)]
        first.commit(got[:6])
    bus.produce(topic, numbered(5, start=10))
    with joined(bus, group, [topic]) as second:
        again = poll_until(second, has(9))
        second.commit(again)
    # Committed messages are not redelivered; the uncommitted tail is.
    assert values(again) == [b"m%04d" % i for i in range(6, 15)]
    bus.produce(topic, [Record(b"k", b"marker")])
    with joined(bus, group, [topic]) as third:
        # Everything before the marker was committed, so the marker comes first.
        assert values(poll_until(third, has(1))) == [b"marker"]


def test_commits_sent_without_waiting_are_stored_when_the_member_closes(
    bus: Bus, unique: Unique
) -> None:
    """What a worker does: commit each batch without waiting (Kafka sends it and
    returns), then close; the next member starts after every batch committed so."""
    topic, group = unique("nowait"), unique("g")
    bus.create_topic(topic, partitions=2)
    bus.produce(topic, numbered(20, key=None))
    with joined(bus, group, [topic]) as first:
        got = poll_until(first, has(20))
        done = [m for m in got if m.offset < 6]  # six of each partition's ten
        for message in done:
            first.commit([message], wait=False)
    with joined(bus, group, [topic]) as second:
        again = poll_until(second, has(8))
    assert sorted(values(again)) == sorted(values([m for m in got if m.offset >= 6]))


def test_commits_sent_without_waiting_are_stored_before_a_partition_moves(
    bus: Bus, unique: Unique
) -> None:
    """A member that committed without waiting gives partitions up to a new member
    with those commits stored: the new owner redelivers none of them."""
    topic, group = unique("nowait-move"), unique("g")
    bus.create_topic(topic, partitions=4)
    with joined(bus, group, [topic]) as first:
        settle([first], 4)
        bus.produce(topic, [Record(b"k%d" % i, b"v%03d" % i) for i in range(40)])
        got = poll_until(first, has(40))
        first.commit(got, wait=False)
        with joined(bus, group, [topic]) as second:
            settle([first, second], 4)
            bus.produce(topic, [Record(b"k%d" % i, b"w%03d" % i) for i in range(40)])
            later: list[Message] = []
            deadline = time.monotonic() + DEADLINE_S
            while len(later) < 40 and time.monotonic() < deadline:
                for member in (first, second):
                    batch = member.poll_batch(50, 0.1)
                    member.commit(batch, wait=False)
                    later.extend(batch)
    assert sorted(values(later)) == [b"w%03d" % i for i in range(40)]  # no v: none again


def test_a_consumer_does_not_redeliver_within_its_session(bus: Bus, unique: Unique) -> None:
    topic = unique("session")
    bus.create_topic(topic, partitions=2)
    bus.produce(topic, numbered(20, key=None))
    with joined(bus, unique("g"), [topic]) as consumer:
        got = poll_until(consumer, has(20))
        bus.produce(topic, numbered(5, start=20, key=None))
        more = poll_until(consumer, has(5))
    assert sorted(values(got + more)) == [b"m%04d" % i for i in range(25)]


def settle(consumers: list[Consumer], partitions: int) -> None:
    """Poll every member until their assignments are disjoint and cover every partition."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        owned = [set(c.assignment()) for c in consumers]
        if all(owned) and sum(map(len, owned)) == partitions == len(set().union(*owned)):
            return
        for consumer in consumers:
            consumer.poll_batch(100, 0.1)
    raise AssertionError(f"group did not settle: {[c.assignment() for c in consumers]}")


def test_two_members_split_partitions_without_double_delivery(bus: Bus, unique: Unique) -> None:
    topic, group = unique("split"), unique("g")
    bus.create_topic(topic, partitions=4)
    with joined(bus, group, [topic]) as one, joined(bus, group, [topic]) as two:
        settle([one, two], 4)
        bus.produce(topic, [Record(b"k%d" % i, b"v%03d" % i) for i in range(200)])
        got: dict[int, list[Message]] = {0: [], 1: []}
        deadline = time.monotonic() + DEADLINE_S
        while sum(map(len, got.values())) < 200 and time.monotonic() < deadline:
            for index, member in enumerate((one, two)):
                batch = member.poll_batch(50, 0.1)
                member.commit(batch)
                got[index].extend(batch)
        owned = [set(one.assignment()), set(two.assignment())]
    first, second = set(values(got[0])), set(values(got[1]))
    assert first and second
    assert not first & second
    assert first | second == {b"v%03d" % i for i in range(200)}
    for index in (0, 1):
        assert {TopicPartition(topic, m.partition) for m in got[index]} <= owned[index]


def test_partitions_move_to_the_remaining_member_when_one_closes(bus: Bus, unique: Unique) -> None:
    topic, group = unique("takeover"), unique("g")
    bus.create_topic(topic, partitions=4)
    with joined(bus, group, [topic]) as stays:
        leaver = bus.consumer(group, [topic])
        settle([stays, leaver], 4)
        leaver.close()
        bus.produce(topic, [Record(b"k%d" % i, b"v%03d" % i) for i in range(100)])
        got = poll_until(stays, has(100))
        assert len(stays.assignment()) == 4
    assert sorted(values(got)) == [b"v%03d" % i for i in range(100)]


def test_independent_groups_each_see_everything(bus: Bus, unique: Unique) -> None:
    topic = unique("groups")
    bus.create_topic(topic, partitions=3)
    bus.produce(topic, [Record(b"k%d" % i, b"v%02d" % i) for i in range(30)])
    with joined(bus, unique("a"), [topic]) as a, joined(bus, unique("b"), [topic]) as b:
        seen_a = poll_until(a, has(30), commit=True)
        seen_b = poll_until(b, has(30), commit=True)
    expected = [b"v%02d" % i for i in range(30)]
    assert sorted(values(seen_a)) == expected
    assert sorted(values(seen_b)) == expected


def consume_all_and_commit(bus: Bus, group: str, topic: str, count: int) -> None:
    with joined(bus, group, [topic]) as consumer:
        assert len(poll_until(consumer, has(count), commit=True)) == count


def test_seek_group_to_earliest_replays_everything(bus: Bus, unique: Unique) -> None:
    topic, group = unique("seek"), unique("g")
    bus.create_topic(topic, partitions=2)
    bus.produce(topic, numbered(20, key=None))
    consume_all_and_commit(bus, group, topic, 20)
    bus.seek_group(group, topic, "earliest")
    with joined(bus, group, [topic]) as consumer:
        replayed = poll_until(consumer, has(20))
    assert sorted(values(replayed)) == [b"m%04d" % i for i in range(20)]


def test_seek_group_to_an_offset_replays_from_it(bus: Bus, unique: Unique) -> None:
    topic, group = unique("seekoff"), unique("g")
    bus.create_topic(topic)
    bus.produce(topic, numbered(10))
    consume_all_and_commit(bus, group, topic, 10)
    bus.seek_group(group, topic, 7)
    with joined(bus, group, [topic]) as consumer:
        replayed = poll_until(consumer, has(3))
    assert values(replayed) == [b"m0007", b"m0008", b"m0009"]
    assert [m.offset for m in replayed] == [7, 8, 9]


def test_seek_group_to_a_timestamp_replays_from_it(bus: Bus, unique: Unique) -> None:
    topic, group = unique("seekts"), unique("g")
    bus.create_topic(topic)
    base = 1_700_000_000_000
    bus.produce(topic, [Record(b"k", b"m%d" % i, base + 1000 * i) for i in range(10)])
    consume_all_and_commit(bus, group, topic, 10)
    bus.seek_group(group, topic, SeekToTimestamp(base + 5500))
    with joined(bus, group, [topic]) as consumer:
        replayed = poll_until(consumer, has(4))
    assert values(replayed) == [b"m6", b"m7", b"m8", b"m9"]


def test_partitions_report_the_groups_committed_offsets(bus: Bus, unique: Unique) -> None:
    topic, group = unique("committed"), unique("g")
    bus.create_topic(topic, partitions=2)
    bus.produce(topic, [Record(None, b"x", None)] * 3 + [Record(b"a", b"y")])
    assert all(p.committed is None and p.low == 0 for p in bus.partitions(topic, group))
    assert group not in bus.groups()
    with joined(bus, group, [topic]) as consumer:
        got = poll_until(consumer, has(4))
        consumer.commit(got)
    last = {m.partition: m.offset for m in got}
    infos = bus.partitions(topic, group)
    assert [p.partition for p in infos] == [0, 1]
    assert {p.partition: p.committed for p in infos} == {p: o + 1 for p, o in last.items()}
    assert group in bus.groups()
    assert all(p.committed is None for p in bus.partitions(topic))


def test_start_latest_skips_what_was_there_before(bus: Bus, unique: Unique) -> None:
    topic = unique("latest")
    bus.create_topic(topic, partitions=2)
    bus.produce(topic, [Record(b"k%d" % i, b"old") for i in range(10)])
    with joined(bus, unique("g"), [topic], start="latest") as consumer:
        # Kafka resolves "latest" only once the member has its partitions and
        # fetches; keep producing until new messages arrive.
        got: list[Message] = []
        deadline = time.monotonic() + DEADLINE_S
        sent = 0
        while not got and time.monotonic() < deadline:
            bus.produce(topic, [Record(b"k%d" % sent, b"new")])
            sent += 1
            got = consumer.poll_batch(100, 0.2)
    assert got
    assert set(values(got)) == {b"new"}


def members_when(bus: Bus, group: str, done: Callable[[int], bool], poll: Consumer | None) -> int:
    """``bus.members(group)`` once ``done`` accepts it or the deadline passes.

    ``poll`` keeps polling a consumer meanwhile: Kafka joins a member only as it polls.
    """
    deadline = time.monotonic() + DEADLINE_S
    while not done(count := bus.members(group)) and time.monotonic() < deadline:
        if poll is not None:
            poll.poll_batch(10, 0.2)
        else:
            time.sleep(0.05)
    return count


def test_members_counts_the_live_members_of_a_group(bus: Bus, unique: Unique) -> None:
    topic, group = unique("members"), unique("g")
    bus.create_topic(topic, partitions=2)
    bus.produce(topic, numbered(3))
    assert bus.members(group) == 0
    consumer = bus.consumer(group, [topic])
    try:
        assert members_when(bus, group, lambda n: n > 0, consumer) == 1
        assert len(poll_until(consumer, has(3))) == 3
        assert bus.members(group) == 1
    finally:
        consumer.close()
    assert members_when(bus, group, lambda n: n == 0, None) == 0
    assert bus.members(unique("never-joined")) == 0
