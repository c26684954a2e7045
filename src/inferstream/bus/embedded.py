"""The embedded durable log: the default bus, one SQLite file, no server.

``sqlite:///path/to/bus.db`` opens (and creates, with its folder) a log that several
OS processes produce to and consume from at once. Topics have partitions; a key
picks its partition with :func:`~inferstream.bus.base.partition_for` and keyless
records go round-robin. Offsets are dense per partition from 0; timestamps are
milliseconds since the epoch, the append time by the clock of the process that appends
(the log has no broker of its own: on one machine that is the machine's clock).
Retention by age drops only a prefix of a partition, up to the first message young
enough, so a message stamped older than one before it (a clock stepped back) is never
dropped ahead of that one. Producing a batch is one transaction, so a batch is either
wholly in the log or not at all.

URL options: ``session_timeout_s`` (default 10) — a consumer-group member whose
heartbeat is older than this is dead and its partitions move to the others (a
background thread heartbeats while the member works on a long batch);
``max_poll_interval_s`` (default 300) — a member that has not polled for this long
is taken as stuck: its heartbeats stop and the group replaces it;
``synchronous`` (default ``normal``) — see :mod:`inferstream.bus.embedded_db` for
what survives a crash (with ``normal``: everything committed survives ``kill -9``
of any process; a power loss may lose the last transactions; ``full`` survives that).

Reading guide: :mod:`~inferstream.bus.embedded_db` (connections, schema,
transactions), :mod:`~inferstream.bus.embedded_groups` (membership, assignment,
fencing), :mod:`~inferstream.bus.embedded_consumer` (polling),
:mod:`~inferstream.bus.embedded_wake` (waking idle consumers).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from inferstream.bus import embedded_groups as groups
from inferstream.bus.base import (
    PartitionInfo,
    Record,
    RetentionPolicy,
    SeekTarget,
    SeekToTimestamp,
    TopicPartition,
    partition_for,
)
from inferstream.bus.embedded_checkpoint import Checkpointer
from inferstream.bus.embedded_consumer import EmbeddedConsumer
from inferstream.bus.embedded_db import EmbeddedSettings, connect, now_ms, run
from inferstream.bus.embedded_wake import Bells
from inferstream.errors import BusError, ConfigError, UnknownTopicError

T = TypeVar("T")
log = logging.getLogger(__name__)
#: Messages deleted per retention transaction.
RETENTION_CHUNK = 10_000


class EmbeddedBus:
    """A connection to the embedded log named by ``url`` (thread-safe)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.settings = EmbeddedSettings.from_url(url)
        self._conn = connect(self.settings)
        self._bells = Bells(self.settings.path)
        self._lock = threading.Lock()
        self._round_robin = itertools.count()
        # Topics are never deleted or resized, so a looked-up topic stays valid.
        self._topics: dict[str, tuple[int, int]] = {}
        self._checkpointer: Checkpointer | None = None

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create ``name`` if missing; an existing topic keeps its partition count."""
        if not name or partitions < 1:
            raise ConfigError(
                f"topic {name!r} with {partitions} partitions: give a name and >= 1 partition"
            )

        def work(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)", (name, partitions)
            )
            if cursor.rowcount:
                conn.executemany(
                    "INSERT INTO partitions (topic_id, part) VALUES (?, ?)",
                    [(cursor.lastrowid, part) for part in range(partitions)],
                )

        self._write(work)

    def produce(self, topic: str, records: Sequence[Record]) -> None:
        """Append ``records`` in one transaction; committed to the file when this returns."""
        if not records:
            return
        topic_id, count = self._topic(topic)
        now = now_ms()
        placed = [
            (
                partition_for(r.key, count, next(self._round_robin)),
                r.key,
                r.value,
                now if r.timestamp_ms is None else r.timestamp_ms,
            )
            for r in records
        ]

        def work(conn: sqlite3.Connection) -> None:
            high = dict(
                conn.execute("SELECT part, high FROM partitions WHERE topic_id = ?", (topic_id,))
            )
            rows = []
            for part, key, value, ts in placed:
                rows.append((topic_id, part, high[part], key, value, ts))
                high[part] += 1
            conn.executemany(
                "INSERT INTO messages (topic_id, part, seq, key, value, ts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            touched = {part for part, *_ in placed}
            conn.executemany(
                "UPDATE partitions SET high = ? WHERE topic_id = ? AND part = ?",
                [(high[part], topic_id, part) for part in touched],
            )

        with self._lock:
            run(self._conn, work)
            self._bells.ring(topic_id)  # committed: wake the topic's idle consumers
            if self._checkpointer is None:  # this process writes: it keeps the log short
                self._checkpointer = Checkpointer(self.settings)
            self._checkpointer.after_write(self._conn, sum(len(r.value) for r in records))

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start: Literal["earliest", "latest"] = "earliest",
    ) -> EmbeddedConsumer:
        """Join ``group`` on ``topics`` (which must exist) as a new member."""
        if not group or not topics:
            raise ConfigError("a consumer needs a group name and at least one topic")
        ids = {name: self._topic(name)[0] for name in topics}
        return EmbeddedConsumer(self.settings, group, ids, start)

    def seek_group(self, group: str, topic: str, target: SeekTarget | SeekToTimestamp) -> None:
        """Set ``group``'s committed offsets on every partition of ``topic``.

        Offsets are clamped to the retained range. Running members drop their
        in-memory positions for ``topic`` and resume from the new offsets.
        """
        topic_id, count = self._topic(topic)

        def work(conn: sqlite3.Connection) -> None:
            offsets = {
                TopicPartition(topic, part): _seek_offset(conn, topic_id, part, target)
                for part in range(count)
            }
            groups.store_offsets(conn, group, offsets)
            groups.reload_topic(conn, group, topic)

        self._write(work)

    def members(self, group: str) -> int:
        """Members of ``group`` whose heartbeat is not older than their session timeout."""
        return self._read(lambda c: groups.live_members(c, group, now_ms()))

    def partitions(self, topic: str, group: str | None = None) -> list[PartitionInfo]:
        topic_id, _ = self._topic(topic)

        def work(conn: sqlite3.Connection) -> list[PartitionInfo]:
            rows = conn.execute(
                "SELECT part, low, high FROM partitions WHERE topic_id = ? ORDER BY part",
                (topic_id,),
            ).fetchall()
            return [
                PartitionInfo(
                    topic,
                    part,
                    low,
                    high,
                    None
                    if group is None
                    else groups.committed(conn, group, TopicPartition(topic, part)),
                )
                for part, low, high in rows
            ]

        return self._read(work)

    def topics(self) -> dict[str, int]:
        rows = self._read(lambda c: c.execute("SELECT name, partitions FROM topics").fetchall())
        return {str(name): int(count) for name, count in rows}

    def groups(self) -> list[str]:
        rows = self._read(
            lambda c: c.execute("SELECT DISTINCT grp FROM offsets ORDER BY grp").fetchall()
        )
        return [str(name) for (name,) in rows]

    def apply_retention(self, topic: str, policy: RetentionPolicy) -> int:
        """Drop the oldest messages of each partition the policy no longer keeps.

        Only a prefix of a partition is dropped, so offsets stay dense: by age, the
        messages before the first one newer than ``max_age_s``; by count, all but
        the newest ``max_messages``. Deletes at most ``RETENTION_CHUNK`` messages per
        transaction, so a large backlog never holds the write lock for long.
        """
        topic_id, count = self._topic(topic)
        cutoff = None if policy.max_age_s is None else now_ms() - int(policy.max_age_s * 1000)
        dropped = 0
        for part in range(count):

            def work(conn: sqlite3.Connection, part: int = part) -> int:
                return _trim(conn, topic_id, part, cutoff, policy.max_messages)

            while (chunk := self._write(work)) > 0:
                dropped += chunk
        return dropped

    def close(self) -> None:
        with self._lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            self._bells.close()
            self._conn.close()

    def _topic(self, name: str) -> tuple[int, int]:
        """(id, partition count) of topic ``name``."""
        found = self._topics.get(name)
        if found is None:
            row = self._read(
                lambda c: c.execute(
                    "SELECT id, partitions FROM topics WHERE name = ?", (name,)
                ).fetchone()
            )
            if row is None:
                raise UnknownTopicError(
                    f"topic {name!r} does not exist in {self.url}; create it with create_topic"
                )
            found = self._topics[name] = (int(row[0]), int(row[1]))
        return found

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return run(self._conn, work)

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return run(self._conn, work, transaction="read")


def _seek_offset(
    conn: sqlite3.Connection, topic_id: int, part: int, target: SeekTarget | SeekToTimestamp
) -> int:
    """The offset ``target`` names in one partition, clamped to the retained range."""
    low, high = conn.execute(
        "SELECT low, high FROM partitions WHERE topic_id = ? AND part = ?", (topic_id, part)
    ).fetchone()
    if isinstance(target, SeekToTimestamp):
        row = conn.execute(
            "SELECT MIN(seq) FROM messages WHERE topic_id = ? AND part = ? AND ts >= ?",
            (topic_id, part, target.ms),
        ).fetchone()
        wanted = high if row[0] is None else int(row[0])
    elif target == "earliest":
        wanted = low
    elif target == "latest":
        wanted = high
    elif isinstance(target, int) and not isinstance(target, bool):
        wanted = target
    else:
        raise BusError(
            f"cannot seek to {target!r}; use 'earliest', 'latest', an offset or SeekToTimestamp"
        )
    return int(min(max(wanted, low), high))


def _trim(
    conn: sqlite3.Connection, topic_id: int, part: int, cutoff: int | None, keep: int | None
) -> int:
    """Drop the prefix of one partition that the age ``cutoff`` or the count ``keep`` rejects."""
    low, high = conn.execute(
        "SELECT low, high FROM partitions WHERE topic_id = ? AND part = ?", (topic_id, part)
    ).fetchone()
    new_low = low
    if keep is not None:
        new_low = max(new_low, high - keep)
    if cutoff is not None:
        row = conn.execute(
            "SELECT MIN(seq) FROM messages WHERE topic_id = ? AND part = ? AND ts >= ?",
            (topic_id, part, cutoff),
        ).fetchone()
        new_low = max(new_low, high if row[0] is None else int(row[0]))
    new_low = min(new_low, low + RETENTION_CHUNK)
    if new_low <= low:
        return 0
    dropped = conn.execute(
        "DELETE FROM messages WHERE topic_id = ? AND part = ? AND seq >= ? AND seq < ?",
        (topic_id, part, low, new_low),
    ).rowcount
    conn.execute(
        "UPDATE partitions SET low = ? WHERE topic_id = ? AND part = ?", (new_low, topic_id, part)
    )
    return int(dropped)
