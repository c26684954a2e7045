"""The Kafka backend of the bus (any Kafka-protocol cluster), on confluent-kafka.

URL: ``kafka://host:port[,host:port][?option=value...]``; each query option is passed
through to librdkafka as is (``?session.timeout.ms=6000``). Producers are idempotent
with ``acks=all`` and :meth:`KafkaBus.produce` returns only once every record is
acknowledged. Keys are placed with :func:`~inferstream.bus.base.partition_for`, so a key
lands on the same partition number as in the embedded backend. Consumers never commit
by themselves; see :mod:`inferstream.bus.kafka_consumer`.

Broker notes, found against tansu 0.6 (the test broker): it answers a timestamp lookup
(ListOffsets by time) with the log start and reports a high watermark that ends at the
first record of the last batch, so :meth:`KafkaBus.seek_group` takes both as lower
bounds and reads forward to the exact offset. The same watermark bug means a new group
started with ``start="latest"`` on tansu can receive the tail of the last batch written
before it joined (not worked around: real Kafka is exact). It has no DeleteRecords, so
:meth:`KafkaBus.apply_retention` raises there whenever it has records to drop. Offsets
of an idle group are moved with ``AlterConsumerGroupOffsets``, which tansu implements.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any, Literal

from inferstream.bus.base import (
    PartitionInfo,
    Record,
    RetentionPolicy,
    SeekTarget,
    SeekToTimestamp,
    partition_for,
)
from inferstream.bus.kafka_consumer import (
    KafkaConsumer,
    code_name,
    confluent,
    scan_partitions,
    translate,
    translate_error,
)
from inferstream.bus.kafka_settings import KafkaSettings
from inferstream.errors import BusError, ConfigError, UnknownTopicError

#: How long one admin or metadata request may take before we call the cluster unreachable.
REQUEST_TIMEOUT_S = 10.0

#: Answers to AlterConsumerGroupOffsets that mean "the group is not idle".
_BUSY_GROUP_CODES = ("UNKNOWN_MEMBER_ID", "NON_EMPTY_GROUP", "REBALANCE_IN_PROGRESS")


def _seek_error(group: str, topic: str, error: Any) -> BusError:
    if code_name(error) in _BUSY_GROUP_CODES:
        return BusError(
            f"group {group!r} still has running members, so the broker will not move its "
            f"offsets on {topic!r} ({error}); stop the group's workers, then seek again"
        )
    return translate_error(f"moving group {group!r} on {topic!r}", error)


class KafkaBus:
    """A :class:`~inferstream.bus.base.Bus` on a Kafka-protocol cluster."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.settings = KafkaSettings.from_url(url)
        self._ck = confluent()
        self._producer: Any = None
        self._admin: Any = None
        self._reader: Any = None
        self._partition_counts: dict[str, int] = {}
        self._round_robin = itertools.count()

    # -- clients, created on first use -------------------------------------------------

    def _admin_client(self) -> Any:
        if self._admin is None:
            self._admin = self._ck.admin.AdminClient(self.settings.admin_config())
        return self._admin

    def _reader_consumer(self) -> Any:
        """A consumer that never joins a group: watermarks, timestamp lookups, scans."""
        if self._reader is None:
            config = self.settings.consumer_config("inferstream-reader")
            config["enable.partition.eof"] = "true"
            self._reader = self._ck.Consumer(config)
        return self._reader

    # -- topics ------------------------------------------------------------------------

    def _metadata(self) -> dict[str, int]:
        # Always list every topic: asking for one topic by name makes some brokers
        # (tansu) auto-create it.
        try:
            metadata = self._admin_client().list_topics(timeout=REQUEST_TIMEOUT_S)
        except self._ck.KafkaException as exc:
            raise translate(f"listing topics on {self.settings.bootstrap}", exc) from exc
        return {
            name: len(topic.partitions)
            for name, topic in metadata.topics.items()
            if topic.error is None and topic.partitions
        }

    def _partition_count(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            count = self._metadata().get(topic)
            if count is None:
                raise UnknownTopicError(
                    f"topic {topic!r} does not exist on {self.settings.bootstrap}; "
                    f"create it first with Bus.create_topic({topic!r}, partitions=N)"
                )
            self._partition_counts[topic] = count
        return count

    def create_topic(self, name: str, partitions: int = 1) -> None:
        new_topic = self._ck.admin.NewTopic(name, num_partitions=partitions, replication_factor=-1)
        future = self._admin_client().create_topics([new_topic])[name]
        try:
            future.result()
        except self._ck.KafkaException as exc:
            if exc.args[0].code() != self._ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise translate(f"creating topic {name!r}", exc) from exc
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while name not in self._metadata():
            if time.monotonic() > deadline:
                raise BusError(
                    f"topic {name!r} was created but its metadata did not appear within "
                    f"{REQUEST_TIMEOUT_S}s; check the broker's health and retry"
                )
            time.sleep(0.05)
        self._partition_counts.pop(name, None)

    def topics(self) -> dict[str, int]:
        return {name: n for name, n in self._metadata().items() if not name.startswith("__")}

    # -- produce -----------------------------------------------------------------------

    def produce(self, topic: str, records: Sequence[Record]) -> None:
        if not records:
            return
        partitions = self._partition_count(topic)
        if self._producer is None:
            self._producer = self._ck.Producer(self.settings.producer_config())
        producer = self._producer
        failures: list[Any] = []

        def on_delivery(error: Any, _message: Any) -> None:
            if error is not None:
                failures.append(error)

        for record in records:
            if record.key is None:
                partition = next(self._round_robin) % partitions
            else:
                partition = partition_for(record.key, partitions)
            self._produce_one(producer, topic, record, partition, on_delivery)
        # flush() returns how many are still in flight; librdkafka fails each one after
        # message.timeout.ms, so this loop ends and every record has a delivery report.
        in_flight = producer.flush(1.0)
        while in_flight > 0:
            in_flight = producer.flush(1.0)
        if failures:
            # A producer with a failed batch is dropped: an idempotent one that hit a
            # fatal error refuses everything after, and one whose records timed out
            # (the cluster unreachable) can be left fenced (tansu answers its epoch bump
            # with PRODUCER_FENCED). The next produce() starts a fresh one.
            self._producer = None
            raise translate_error(
                f"producing {len(failures)} of {len(records)} records to {topic!r} "
                "(the batch may be partly written; produce it again, ids make it safe)",
                failures[0],
            )

    def _produce_one(
        self, producer: Any, topic: str, record: Record, partition: int, on_delivery: Any
    ) -> None:
        while True:
            try:
                producer.produce(
                    topic,
                    record.value,
                    record.key,
                    partition=partition,
                    timestamp=record.timestamp_ms or 0,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain it
            except self._ck.KafkaException as exc:
                raise translate(f"producing to {topic!r}", exc) from exc

    # -- consume -----------------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start: Literal["earliest", "latest"] = "earliest",
    ) -> KafkaConsumer:
        for topic in topics:
            self._partition_count(topic)
        config = self.settings.consumer_config(group, start, copartition=len(topics) > 1)
        return KafkaConsumer(config, group, topics)

    # -- offsets and groups ------------------------------------------------------------

    def _watermarks(self, topic: str) -> list[tuple[int, int]]:
        reader = self._reader_consumer()
        marks = []
        for partition in range(self._partition_count(topic)):
            tp = self._ck.TopicPartition(topic, partition)
            try:
                low, high = reader.get_watermark_offsets(tp, timeout=REQUEST_TIMEOUT_S)
            except self._ck.KafkaException as exc:
                raise translate(f"reading watermarks of {topic}[{partition}]", exc) from exc
            marks.append((int(low), int(high)))
        return marks

    def _committed(self, group: str, topic: str) -> dict[int, int | None]:
        request = self._ck.ConsumerGroupTopicPartitions(
            group,
            [self._ck.TopicPartition(topic, p) for p in range(self._partition_count(topic))],
        )
        future = self._admin_client().list_consumer_group_offsets([request])[group]
        try:
            answer = future.result()
        except self._ck.KafkaException as exc:
            raise translate(f"reading offsets of group {group!r}", exc) from exc
        return {
            tp.partition: tp.offset if tp.offset >= 0 else None for tp in answer.topic_partitions
        }

    def partitions(self, topic: str, group: str | None = None) -> list[PartitionInfo]:
        """Watermarks per partition. On tansu ``high`` can be too low (see module notes)."""
        marks = self._watermarks(topic)
        committed = self._committed(group, topic) if group is not None else {}
        return [
            PartitionInfo(topic, p, low, high, committed.get(p))
            for p, (low, high) in enumerate(marks)
        ]

    def groups(self) -> list[str]:
        future = self._admin_client().list_consumer_groups()
        try:
            answer = future.result()
        except self._ck.KafkaException as exc:
            raise translate(f"listing consumer groups on {self.settings.bootstrap}", exc) from exc
        return sorted(group.group_id for group in answer.valid)

    def members(self, group: str) -> int:
        """Members of ``group`` now (DescribeGroups); 0 for a group the broker does not know."""
        futures = self._admin_client().describe_consumer_groups(
            [group], request_timeout=REQUEST_TIMEOUT_S
        )
        try:
            found = futures[group].result()
        except self._ck.KafkaException as exc:
            if code_name(exc.args[0]) == "GROUP_ID_NOT_FOUND":
                return 0
            raise translate(f"describing group {group!r}", exc) from exc
        # tansu 0.6 lists no members even for a stable group: a group neither empty nor
        # dead has at least one.
        idle = (self._ck.ConsumerGroupState.EMPTY, self._ck.ConsumerGroupState.DEAD)
        return max(len(found.members), int(found.state not in idle))

    def seek_group(self, group: str, topic: str, target: SeekTarget | SeekToTimestamp) -> None:
        """Move ``group`` on every partition of ``topic`` with AlterConsumerGroupOffsets.

        Kafka refuses this while the group has running members: stop its workers first.
        """
        offsets = self._target_offsets(topic, target)
        request = self._ck.ConsumerGroupTopicPartitions(
            group, [self._ck.TopicPartition(topic, p, off) for p, off in offsets.items()]
        )
        future = self._admin_client().alter_consumer_group_offsets([request])[group]
        try:
            answer = future.result()
        except self._ck.KafkaException as exc:
            raise _seek_error(group, topic, exc.args[0]) from exc
        for tp in answer.topic_partitions:
            if tp.error is not None:
                raise _seek_error(group, topic, tp.error)

    def _target_offsets(self, topic: str, target: SeekTarget | SeekToTimestamp) -> dict[int, int]:
        marks = self._watermarks(topic)
        if target == "earliest":
            return {p: low for p, (low, _high) in enumerate(marks)}
        if isinstance(target, SeekToTimestamp):
            return self._offsets_for_time(topic, target.ms, marks)
        ends = self._ends(topic, marks)
        if target == "latest":
            return ends
        if isinstance(target, int):
            return {p: min(max(target, low), ends[p]) for p, (low, _high) in enumerate(marks)}
        raise ConfigError(f"unknown seek target {target!r}; use 'earliest', 'latest', an offset")

    def _ends(self, topic: str, marks: list[tuple[int, int]]) -> dict[int, int]:
        """The true next offset per partition, read forward from the last reported message.

        Reading starts one before the high watermark: tansu reports the first offset of
        the last batch plus one, and serves that batch only when asked for its start.
        """
        starts = {p: max(low, high - 1) for p, (low, high) in enumerate(marks)}
        return scan_partitions(self._reader_consumer(), starts, topic, lambda _msg: False)

    def _offsets_for_time(
        self, topic: str, ms: int, marks: list[tuple[int, int]]
    ) -> dict[int, int]:
        """First offset per partition whose timestamp is >= ``ms`` (the end if none is)."""
        query = [self._ck.TopicPartition(topic, p, ms) for p in range(len(marks))]
        try:
            found = self._reader_consumer().offsets_for_times(query, timeout=REQUEST_TIMEOUT_S)
        except self._ck.KafkaException as exc:
            raise translate(f"looking up offsets by time in {topic!r}", exc) from exc
        # The broker's answer is exact on Kafka, the log start on tansu; -1 means "no
        # message that late", so read from the high watermark to find the true end.
        starts = {
            tp.partition: tp.offset if tp.offset >= 0 else max(marks[tp.partition][1] - 1, 0)
            for tp in found
        }
        return scan_partitions(
            self._reader_consumer(), starts, topic, lambda msg: msg.timestamp()[1] >= ms
        )

    # -- retention ---------------------------------------------------------------------

    def apply_retention(self, topic: str, policy: RetentionPolicy) -> int:
        """Trim ``topic`` to ``policy`` now with DeleteRecords; return how many were dropped.

        ``max_age_s`` is also written as the topic's ``retention.ms`` so the brokers keep
        aging messages out between calls. DeleteRecords is exact on Kafka; tansu 0.6
        does not implement it and this raises :class:`BusError` there.
        """
        if policy.max_age_s is None and policy.max_messages is None:
            return 0
        marks = self._watermarks(topic)
        cutoffs = {p: low for p, (low, _high) in enumerate(marks)}
        if policy.max_age_s is not None:
            self._set_retention_ms(topic, int(policy.max_age_s * 1000))
            oldest_kept_ms = int(time.time() * 1000 - policy.max_age_s * 1000)
            for p, off in self._offsets_for_time(topic, oldest_kept_ms, marks).items():
                cutoffs[p] = max(cutoffs[p], off)
        if policy.max_messages is not None:
            for p, end in self._ends(topic, marks).items():
                cutoffs[p] = max(cutoffs[p], end - policy.max_messages)
        return self._delete_before(topic, cutoffs, marks)

    def _set_retention_ms(self, topic: str, retention_ms: int) -> None:
        admin_mod = self._ck.admin
        entry = admin_mod.ConfigEntry(
            "retention.ms",
            str(retention_ms),
            incremental_operation=admin_mod.AlterConfigOpType.SET,
        )
        resource = admin_mod.ConfigResource("topic", topic, incremental_configs=[entry])
        futures = self._admin_client().incremental_alter_configs([resource])
        try:
            for future in futures.values():
                future.result()
        except self._ck.KafkaException as exc:
            raise translate(f"setting retention.ms on {topic!r}", exc) from exc

    def _delete_before(
        self, topic: str, cutoffs: dict[int, int], marks: list[tuple[int, int]]
    ) -> int:
        todo = [
            self._ck.TopicPartition(topic, p, off)
            for p, off in cutoffs.items()
            if off > marks[p][0]
        ]
        if not todo:
            return 0
        futures = self._admin_client().delete_records(todo)
        dropped = 0
        try:
            for tp, future in futures.items():
                result = future.result()
                dropped += result.low_watermark - marks[tp.partition][0]
        except self._ck.KafkaException as exc:
            raise translate(
                f"deleting old records of {topic!r} (the broker may lack DeleteRecords; "
                "tansu 0.6 does not implement it)",
                exc,
            ) from exc
        return dropped

    def close(self) -> None:
        if self._producer is not None:
            in_flight = self._producer.flush(1.0)
            while in_flight > 0:
                in_flight = self._producer.flush(1.0)
            self._producer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._admin = None
