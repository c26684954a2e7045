"""The bus interface every backend implements.

Kept deliberately small: create a topic, produce a batch, consume a batch as a
member of a consumer group, commit, count a group's members and move its offsets
(replay). The conformance suite in ``tests/bus/`` runs unchanged against every backend.

Delivery is at-least-once: a consumer commits only after the output of a batch is
durable, so a crash redelivers the uncommitted tail; stages give outputs
deterministic ids so a redelivery never doubles a result downstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

#: Where :meth:`Bus.seek_group` moves a group: the start of the retained log, an
#: absolute offset (same for every partition), or the first message at or after a
#: timestamp in milliseconds since the epoch.
SeekTarget = Literal["earliest", "latest"] | int


@dataclass(frozen=True, slots=True)
class SeekToTimestamp:
    """Seek target: first message whose timestamp is >= ``ms`` (Unix epoch, milliseconds)."""

    ms: int


class Record(NamedTuple):
    """One message to produce. Records with equal keys land in the same partition."""

    key: bytes | None
    value: bytes
    #: Timestamp, ms since epoch, for a caller that must choose it (tests, tools); when
    #: None the producing process stamps its clock (the append time on the embedded
    #: log; librdkafka's CreateTime on Kafka).
    timestamp_ms: int | None = None


class Message(NamedTuple):
    """One consumed message and where it sits in the log.

    A NamedTuple rather than a frozen dataclass: consumers build one per message, and
    a frozen dataclass costs several times more to construct (measured in
    ``bench/bus_bench.py``: it was most of the framework's consume overhead).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class TopicPartition:
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """State of one partition, and of a group on it when asked for a group."""

    topic: str
    partition: int
    #: Offset of the first retained message.
    low: int
    #: Offset the next produced message will get.
    high: int
    #: Next offset the group will read (None when the group never committed).
    committed: int | None = None

    @property
    def lag(self) -> int:
        start = self.low if self.committed is None else max(self.committed, self.low)
        return max(self.high - start, 0)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Drop messages older than ``max_age_s`` or beyond ``max_messages`` per partition."""

    max_age_s: float | None = None
    max_messages: int | None = None


def partition_for(key: bytes | None, partitions: int, fallback: int = 0) -> int:
    """Map a key to a partition, the same way in every backend and process.

    Keyless records go to ``fallback`` (the caller spreads them, e.g. round-robin).
    CRC32 is stable across processes and Python versions, unlike ``hash()``.
    """
    import zlib

    if key is None:
        return fallback % partitions
    return zlib.crc32(key) % partitions


class Consumer(Protocol):
    """A member of a consumer group reading one or more topics."""

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[Message]:
        """Return up to ``max_records`` messages, waiting at most ``max_wait_s``.

        Returns what is available as soon as anything is (partial batches rather
        than waiting for a full one); an empty list when nothing arrived in time.
        Messages of one partition come in offset order.
        """
        ...

    def commit(self, messages: Sequence[Message], *, wait: bool = True) -> None:
        """Mark ``messages`` (and everything before them per partition) as done.

        Raises :class:`~inferstream.errors.FencedError` when this member no longer
        owns a partition of them (it was taken over after a stall). With ``wait``
        false a bus may send the commit without waiting for it to be stored (Kafka
        does; the embedded bus always stores it): it is stored by the time this member
        closes or gives the partition up, and an error is raised by the next commit. A
        commit lost meanwhile (a crash) only redelivers what was done.
        """
        ...

    def assignment(self) -> list[TopicPartition]:
        """Partitions this member currently owns."""
        ...

    def close(self) -> None:
        """Leave the group so its partitions move to other members at once."""
        ...


class Bus(Protocol):
    """A connection to one bus (embedded log or Kafka), chosen by URL."""

    url: str

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create ``name`` if it does not exist (idempotent)."""
        ...

    def produce(self, topic: str, records: Sequence[Record]) -> None:
        """Append ``records``; durable (flushed, acknowledged) when this returns."""
        ...

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start: Literal["earliest", "latest"] = "earliest",
    ) -> Consumer:
        """Join ``group`` on ``topics``; a group with no committed offset starts at ``start``."""
        ...

    def seek_group(self, group: str, topic: str, target: SeekTarget | SeekToTimestamp) -> None:
        """Move a group's committed offsets on every partition of ``topic`` (replay).

        Meant for a group with no running members; running members pick the new
        position up when they next rejoin.
        """
        ...

    def members(self, group: str) -> int:
        """Live members of ``group`` now; 0 for a group nobody has joined.

        A member that crashed counts until the bus declares it dead (its session
        timeout); one that closed its consumer stops counting at once.
        """
        ...

    def partitions(self, topic: str, group: str | None = None) -> list[PartitionInfo]:
        """Watermarks of each partition, with the group's committed offsets if given."""
        ...

    def topics(self) -> dict[str, int]:
        """Every topic and its partition count."""
        ...

    def groups(self) -> list[str]:
        """Every consumer group that has committed offsets."""
        ...

    def apply_retention(self, topic: str, policy: RetentionPolicy) -> int:
        """Delete messages the policy no longer keeps; return how many were dropped."""
        ...

    def close(self) -> None: ...
