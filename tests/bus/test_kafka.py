"""Kafka-only behaviour of the bus, against the real tansu broker from the fixture.

The shared behaviour (round trip, commit, redelivery, seek, groups) is in
``test_conformance.py``; here: the librdkafka settings that make delivery safe, the
partitioner, fencing, and the workarounds for tansu's watermark and timestamp answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from inferstream.bus import (
    Message,
    Record,
    RetentionPolicy,
    SeekTarget,
    SeekToTimestamp,
    partition_for,
)
from inferstream.bus.kafka import KafkaBus
from inferstream.bus.kafka_consumer import KafkaConsumer
from inferstream.bus.kafka_settings import KafkaSettings
from inferstream.errors import BusError, ConfigError, FencedError, UnknownTopicError

pytestmark = pytest.mark.kafka

DEADLINE_S = 30.0
Unique = Callable[[str], str]


@pytest.fixture
def kafka(kafka_url: str) -> Iterator[KafkaBus]:
    bus = KafkaBus(kafka_url)
    try:
        yield bus
    finally:
        bus.close()


def poll_until(consumer: KafkaConsumer, count: int) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < count and time.monotonic() < deadline:
        got.extend(consumer.poll_batch(100, 0.2))
    return got


def test_url_options_pass_through_but_cannot_weaken_delivery() -> None:
    url = (
        "kafka://b1:9092,b2:9092?session.timeout.ms=7000&acks=1"
        "&enable.idempotence=false&enable.auto.commit=true"
    )
    settings = KafkaSettings.from_url(url)
    producer = settings.producer_config()
    consumer = settings.consumer_config("g", start="latest")
    assert producer["bootstrap.servers"] == "b1:9092,b2:9092"
    assert (producer["enable.idempotence"], producer["acks"]) == ("true", "all")
    assert consumer["session.timeout.ms"] == "7000"
    assert consumer["enable.auto.commit"] == "false"
    assert consumer["enable.auto.offset.store"] == "false"
    assert consumer["partition.assignment.strategy"] == "cooperative-sticky"
    assert (consumer["group.id"], consumer["auto.offset.reset"]) == ("g", "latest")


def test_a_url_without_brokers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="kafka://host:port"):
        KafkaSettings.from_url("kafka://")


def test_keys_land_on_partition_for_and_keyless_records_spread(
    kafka: KafkaBus, unique: Unique
) -> None:
    topic = unique("partitioner")
    kafka.create_topic(topic, partitions=5)
    keyed = [Record(b"key-%d" % i, b"keyed") for i in range(50)]
    kafka.produce(topic, [*keyed, *[Record(None, b"keyless")] * 10])
    consumer = kafka.consumer(unique("g"), [topic])
    try:
        got = poll_until(consumer, 60)
    finally:
        consumer.close()
    assert len(got) == 60
    assert all(m.partition == partition_for(m.key, 5) for m in got if m.key is not None)
    assert {m.partition for m in got if m.key is None} == set(range(5))


def test_unknown_topics_are_refused_and_not_auto_created(kafka: KafkaBus, unique: Unique) -> None:
    topic = unique("missing")
    with pytest.raises(UnknownTopicError, match="create_topic"):
        kafka.produce(topic, [Record(b"k", b"v")])
    with pytest.raises(UnknownTopicError):
        kafka.consumer(unique("g"), [topic])
    with pytest.raises(UnknownTopicError):
        kafka.partitions(topic)
    assert topic not in kafka.topics()


def test_a_local_library_refusal_becomes_a_bus_error(kafka_url: str, unique: Unique) -> None:
    small = KafkaBus(f"{kafka_url}?message.max.bytes=2000")
    try:
        topic = unique("toolarge")
        small.create_topic(topic)
        with pytest.raises(BusError, match="producing to"):
            small.produce(topic, [Record(b"k", b"x" * 10_000)])
    finally:
        small.close()


def test_commit_of_a_partition_taken_over_is_fenced(kafka: KafkaBus, unique: Unique) -> None:
    topic, group = unique("fenced"), unique("g")
    kafka.create_topic(topic, partitions=2)
    kafka.produce(topic, [Record(b"k%d" % i, b"v") for i in range(20)])
    first = kafka.consumer(group, [topic])
    second: KafkaConsumer | None = None
    try:
        early = poll_until(first, 20)
        assert {m.partition for m in early} == {0, 1}
        second = kafka.consumer(group, [topic])
        deadline = time.monotonic() + DEADLINE_S
        while not (first.assignment() and second.assignment()) and time.monotonic() < deadline:
            first.poll_batch(100, 0.1)
            second.poll_batch(100, 0.1)
        taken = second.assignment()
        assert len(taken) == 1 and len(first.assignment()) == 1
        kept = [m for m in early if m.partition != taken[0].partition]
        with pytest.raises(FencedError, match="no longer assigns"):
            first.commit(early)
    finally:
        first.close()
        if second is not None:
            second.close()
    # The partition still owned was committed; the one taken over was left to its owner.
    committed = {p.partition: p.committed for p in kafka.partitions(topic, group)}
    assert committed[taken[0].partition] is None
    assert committed[kept[0].partition] == kept[-1].offset + 1


def _consume_nothing_then_seek(kafka: KafkaBus, unique: Unique) -> tuple[str, str]:
    """A one-partition topic whose 10 messages sit in a single batch, and an idle group."""
    topic, group = unique("seekend"), unique("g")
    kafka.create_topic(topic)
    kafka.produce(topic, [Record(b"k", b"old%d" % i, 1_700_000_000_000 + i) for i in range(10)])
    return topic, group


def _first_after_marker(kafka: KafkaBus, topic: str, group: str) -> list[bytes]:
    kafka.produce(topic, [Record(b"k", b"marker")])
    consumer = kafka.consumer(group, [topic])
    try:
        return [m.value for m in poll_until(consumer, 1)]
    finally:
        consumer.close()


@pytest.mark.parametrize(
    "target", ["latest", 1_000_000, SeekToTimestamp(1_800_000_000_000)], ids=str
)
def test_seek_past_the_last_message_lands_exactly_on_the_end(
    kafka: KafkaBus, unique: Unique, target: SeekTarget | SeekToTimestamp
) -> None:
    # tansu reports this partition's high watermark as 1 and answers every timestamp
    # lookup with 0; the end must still be offset 10, not a replay.
    topic, group = _consume_nothing_then_seek(kafka, unique)
    kafka.seek_group(group, topic, target)
    assert kafka.partitions(topic, group)[0].committed == 10
    assert _first_after_marker(kafka, topic, group) == [b"marker"]


def test_seek_to_a_timestamp_inside_one_batch(kafka: KafkaBus, unique: Unique) -> None:
    topic, group = _consume_nothing_then_seek(kafka, unique)
    kafka.seek_group(group, topic, SeekToTimestamp(1_700_000_000_007))
    assert kafka.partitions(topic, group)[0].committed == 7


def test_retention_by_age_is_handed_to_the_broker(
    kafka: KafkaBus, kafka_url: str, unique: Unique
) -> None:
    topic = unique("retention")
    kafka.create_topic(topic)
    kafka.produce(topic, [Record(b"k", b"fresh")])
    assert kafka.apply_retention(topic, RetentionPolicy()) == 0
    # Every message is younger than a day, so nothing is dropped now ...
    assert kafka.apply_retention(topic, RetentionPolicy(max_age_s=86_400)) == 0
    # ... and the broker is told to age messages out itself from now on.
    admin = AdminClient({"bootstrap.servers": kafka_url.removeprefix("kafka://")})
    resource = ConfigResource("topic", topic)
    (future,) = admin.describe_configs([resource]).values()
    configs = future.result(timeout=10)
    assert configs["retention.ms"].value == "86400000"


def test_seek_of_a_group_with_running_members_says_to_stop_them(
    kafka: KafkaBus, unique: Unique
) -> None:
    topic, group = unique("busy"), unique("g")
    kafka.create_topic(topic)
    kafka.produce(topic, [Record(b"k", b"v")])
    consumer = kafka.consumer(group, [topic])
    try:
        assert len(poll_until(consumer, 1)) == 1
        with pytest.raises(BusError, match="still has running members") as caught:
            kafka.seek_group(group, topic, "earliest")
        assert not isinstance(caught.value, FencedError)
    finally:
        consumer.close()
