"""The Kafka side of a consumer-group member, plus the error translation shared by the Kafka bus.

A :class:`KafkaConsumer` is what :meth:`inferstream.bus.kafka.KafkaBus.consumer` returns.
Offsets are stored and committed only when the caller says so (the worker commits after
its batch's output is durable), never by librdkafka's auto-commit or auto-store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from inferstream.bus.base import Message, TopicPartition
from inferstream.errors import BusError, FencedError, MissingExtraError, UnknownTopicError

#: Broker answers that mean "you are no longer the member that owns these partitions".
_FENCED_CODES = (
    "ILLEGAL_GENERATION",
    "UNKNOWN_MEMBER_ID",
    "REBALANCE_IN_PROGRESS",
    "FENCED_INSTANCE_ID",
    "_ASSIGNMENT_LOST",
    "STALE_MEMBER_EPOCH",
)
_UNKNOWN_TOPIC_CODES = ("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION")
#: Consumer events librdkafka recovers from by itself (reconnect, rejoin): reported, not
#: raised, so a broker restart does not stop every worker.
_INFORMATIONAL_CODES = (
    "_PARTITION_EOF",
    "_TRANSPORT",
    "_ALL_BROKERS_DOWN",
    "_RESOLVE",
    "_TIMED_OUT",
    "_MAX_POLL_EXCEEDED",
)

log = logging.getLogger(__name__)


def confluent() -> ModuleType:
    """Import confluent-kafka, or say which extra to install."""
    try:
        import confluent_kafka
        import confluent_kafka.admin  # not imported by the package itself
    except ImportError as exc:
        raise MissingExtraError("confluent-kafka", "kafka") from exc
    return confluent_kafka


def code_name(error: Any) -> str:
    """Name of a KafkaError's code (``error.name()``), tolerant of odd payloads."""
    name = getattr(error, "name", None)
    return str(name()) if callable(name) else ""


def translate(action: str, exc: BaseException) -> BusError:
    """Turn a confluent-kafka exception (or KafkaError) into our error tree.

    ``action`` says what we were doing, e.g. ``"commit to group 'scans'"``.
    """
    error = exc.args[0] if exc.args else exc
    return translate_error(action, error)


def translate_error(action: str, error: Any) -> BusError:
    """Turn a KafkaError into the matching :class:`BusError` subclass."""
    name = code_name(error)
    if name in _UNKNOWN_TOPIC_CODES:
        return UnknownTopicError(
            f"{action} failed: {error}; create the topic first with Bus.create_topic()"
        )
    if name in _FENCED_CODES:
        return FencedError(
            f"{action} failed: this member no longer owns the partitions ({error}); "
            "drop the batch, its messages will be redelivered to the current owner"
        )
    return BusError(
        f"{action} failed: {error}; check that the Kafka brokers are reachable and retry"
    )


def consume_available(consumer: Any, max_records: int, max_wait_s: float) -> list[Any]:
    """Up to ``max_records`` raw messages, returning as soon as any are available.

    librdkafka's ``consume(n, timeout)`` waits the whole timeout unless ``n`` messages
    arrive, so: drain what is already fetched; if nothing, wait for the first message,
    then drain what came with it.
    """
    batch: list[Any] = consumer.consume(max_records, 0)
    if batch or max_wait_s <= 0:
        return batch
    batch = consumer.consume(1, max_wait_s)
    if batch and max_records > 1:
        batch.extend(consumer.consume(max_records - 1, 0))
    return batch


class KafkaConsumer:
    """A member of a Kafka consumer group; implements :class:`inferstream.bus.base.Consumer`."""

    def __init__(self, config: dict[str, str], group: str, topics: Sequence[str]) -> None:
        ck = confluent()
        self._tp = ck.TopicPartition
        self._group = group
        # (topic, partition) tuples: hashing them is far cheaper than the dataclass.
        self._owned: set[tuple[str, int]] = set()
        self._closed = False
        # An error met beside good messages in one fetch: raised on the next poll, so the
        # good ones (already past librdkafka's position) are handed out, never dropped.
        self._deferred: BusError | None = None
        # Offsets sent without waiting (commit(wait=False)), not yet confirmed by a
        # commit that waited; and the first error the broker answered one of them with.
        self._unconfirmed: dict[tuple[str, int], int] = {}
        self._commit_error: BusError | None = None
        try:
            self._consumer = ck.Consumer({**config, "on_commit": self._on_commit})
            self._consumer.subscribe(
                list(topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
        except ck.KafkaException as exc:
            raise translate(f"joining group {group!r}", exc) from exc

    # librdkafka calls these from inside consume(); with the cooperative protocol they
    # carry only the partitions that changed, with the eager one the whole set.
    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        self._owned.update((p.topic, p.partition) for p in partitions)

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        self._confirm(revoked)  # before the new owner starts
        self._owned.difference_update(revoked)

    def _on_commit(self, error: Any, partitions: list[Any]) -> None:
        """librdkafka's report of a commit sent without waiting (from poll or consume)."""
        if not any((p.topic, p.partition) in self._unconfirmed for p in partitions):
            return  # a commit that waited: its caller saw the result
        failed = [p for p in partitions if p.error is not None]
        if error is not None or failed:
            what = error if error is not None else failed[0].error
            self._commit_error = self._commit_error or translate_error(
                f"commit for group {self._group!r}", what
            )

    def _raise_deferred(self) -> None:
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[Message]:
        self._raise_deferred()
        try:
            raw = consume_available(self._consumer, max_records, max_wait_s)
        except RuntimeError as exc:  # consume() on a closed consumer
            raise BusError(f"consumer of group {self._group!r} is closed; open a new one") from exc
        # The hot loop of every consumer: kept flat, one pass, no per-message helpers.
        messages: list[Message] = []
        append = messages.append
        for msg in raw:
            error = msg.error()
            if error is None:
                append(
                    Message(
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        msg.key(),
                        msg.value() or b"",
                        msg.timestamp()[1],
                    )
                )
            else:
                try:
                    self._consumer_event(error)
                except BusError as exc:
                    self._deferred = self._deferred or exc
        if not messages:
            self._raise_deferred()
        return messages

    def _consumer_event(self, error: Any) -> None:
        """Raise a consumer error unless librdkafka recovers from it by itself."""
        name = code_name(error)
        if name == "_PARTITION_EOF":
            return
        if name in _INFORMATIONAL_CODES and not error.fatal():
            log.warning("Kafka consumer of group %r: %s (retrying)", self._group, error)
            return
        raise translate_error(f"consuming for group {self._group!r}", error)

    def commit(self, messages: Sequence[Message], *, wait: bool = True) -> None:
        """Commit the offsets after ``messages``; with ``wait`` false, send them and
        return (confirmed on close, on a rebalance that takes their partition, or by the
        next commit that waits; a broker's error is raised by the next commit)."""
        if self._commit_error is not None:
            error, self._commit_error = self._commit_error, None
            raise error
        if not messages:
            return
        highest: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic, message.partition)
            if message.offset >= highest.get(key, -1):
                highest[key] = message.offset
        # The broker accepts a commit from any current member for any partition, so a
        # member that lost a partition in a rebalance would overwrite the new owner's
        # progress; commit only what is still ours and refuse the rest.
        lost = sorted(highest.keys() - self._owned)
        for key in lost:
            del highest[key]
        if highest:
            if wait:
                self._commit_offsets(highest)
                for key in highest:
                    self._unconfirmed.pop(key, None)
            else:
                self._commit_offsets(highest, asynchronous=True)
                self._unconfirmed.update(highest)
        if lost:
            names = ", ".join(f"{topic}[{partition}]" for topic, partition in lost)
            raise FencedError(
                f"group {self._group!r} no longer assigns {names} to this member, so their "
                "offsets were not committed (those of partitions it still owns were); "
                "the new owner will redeliver them"
            )

    def _commit_offsets(
        self, highest: dict[tuple[str, int], int], *, asynchronous: bool = False
    ) -> None:
        action = f"commit for group {self._group!r}"
        # Kafka's committed offset is the next one to read, one past the last done.
        offsets = [self._tp(topic, part, last + 1) for (topic, part), last in highest.items()]
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except Exception as exc:  # KafkaException, or RuntimeError when closed
            raise translate(action, exc) from exc
        for tp in result or []:
            if tp.error is not None:
                raise translate_error(f"{action} on {tp.topic}[{tp.partition}]", tp.error)

    def _confirm(self, partitions: set[tuple[str, int]]) -> None:
        """Commit again, waiting, the offsets of ``partitions`` sent without waiting (on
        close or a rebalance: never raises; a commit that fails here only redelivers
        what was done)."""
        highest = {key: self._unconfirmed.pop(key) for key in partitions & self._unconfirmed.keys()}
        if not highest:
            return
        try:
            self._commit_offsets(highest)
        except BusError as exc:
            log.warning("could not confirm the offsets of group %r: %s; what they cover "
                        "will be redelivered", self._group, exc)  # fmt: skip

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition in sorted(self._owned)]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._confirm(self._owned)
        self._owned.clear()
        try:
            self._consumer.close()
        except Exception as exc:
            raise translate(f"leaving group {self._group!r}", exc) from exc


def scan_partitions(
    consumer: Any,
    starts: dict[int, int],
    topic: str,
    stop_at: Callable[[Any], bool],
    quiet_s: float = 1.0,
) -> dict[int, int]:
    """Read each partition forward from ``starts``; return the offset where reading stopped.

    A partition stops at its first message for which ``stop_at`` is true (that message's
    offset) or at the end of its log (the next offset to be written). The end is the
    partition-EOF event, or ``quiet_s`` without any new message: brokers that report a
    wrong high watermark (tansu 0.6) never send EOF for some partitions.
    """
    ck = confluent()
    result = dict(starts)
    pending = set(starts)
    consumer.assign([ck.TopicPartition(topic, p, off) for p, off in starts.items()])
    try:
        last_seen = time.monotonic()
        while pending and time.monotonic() - last_seen < quiet_s:
            for msg in consume_available(consumer, 500, 0.1):
                partition = msg.partition()
                if partition not in pending:
                    continue
                last_seen = time.monotonic()
                error = msg.error()
                if error is not None:
                    if code_name(error) != "_PARTITION_EOF":
                        raise translate_error(f"reading {topic}[{partition}]", error)
                    done = True
                elif stop_at(msg):
                    result[partition] = msg.offset()
                    done = True
                else:
                    result[partition] = msg.offset() + 1
                    done = False
                if done:
                    pending.discard(partition)
                    consumer.pause([ck.TopicPartition(topic, partition)])
    finally:
        # librdkafka remembers a pause across assignments; the next scan must not inherit it.
        consumer.resume([ck.TopicPartition(topic, p) for p in starts])
        consumer.unassign()
    return result
