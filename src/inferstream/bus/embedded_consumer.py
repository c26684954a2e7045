"""A member of a consumer group on the embedded bus (the :class:`Consumer` protocol).

Each consumer has its own SQLite connection, so its short read and write
transactions never interleave with the producer's. It keeps an in-memory position
per owned partition: messages handed out once in this session are not handed out
again unless a rebalance moved the partition (then it resumes from the committed
offset). Polling is a cheap read of the group generation and the partitions'
watermarks; between empty polls the consumer waits on a
:class:`~inferstream.bus.embedded_wake.Doorbell`, which wakes it as soon as a batch is
committed to one of its topics, for at most 50 ms, so a change it has no bell for (a
rebalance, a seek, a producer whose bell failed) is still seen soon. A wait the bell
did not end means nothing was committed: the poll returns without reading again
(re-reading after short timeouts cost four reads per batch at 100 scans/s). Without
bells (:class:`~inferstream.bus.embedded_wake.Sleeper`) it polls every 2-50 ms,
backing off.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Literal

from inferstream.bus import embedded_groups as groups
from inferstream.bus.base import Message, TopicPartition
from inferstream.bus.embedded_db import EmbeddedSettings, connect, now_ms, run
from inferstream.bus.embedded_wake import Doorbell
from inferstream.errors import BusError, FencedError

log = logging.getLogger(__name__)

_MIN_SLEEP_S = 0.002
#: Longest wait between polls of an idle consumer; commits normally wake it sooner.
_MAX_SLEEP_S = 0.050


class EmbeddedConsumer:
    """Joins ``group`` on ``topics`` (name -> topic id) when created."""

    def __init__(
        self,
        settings: EmbeddedSettings,
        group: str,
        topics: dict[str, int],
        start: Literal["earliest", "latest"],
    ) -> None:
        member_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        timeout_ms = int(settings.session_timeout_s * 1000)
        self._member = groups.Member(group, member_id, tuple(sorted(topics)), timeout_ms)
        self._topic_ids = dict(topics)
        self._start = start
        # Heartbeat well inside the session timeout so a busy member never expires.
        self._heartbeat_every_s = settings.session_timeout_s / 4
        self._max_poll_interval_s = settings.max_poll_interval_s
        self._last_poll = time.monotonic()
        self._conn = connect(settings)
        self._doorbell = Doorbell.open(settings.path, topics.values())
        # With bells, a wait ends when one rings: only the cap re-reads on a timer.
        self._first_sleep = _MAX_SLEEP_S if self._doorbell.rings else _MIN_SLEEP_S
        self._lock = threading.Lock()
        self._generation = -1
        self._owned: groups.Owned = {}
        self._positions: dict[TopicPartition, int] = {}
        self._next_heartbeat = 0.0
        self._rotation = 0
        self._closed = False
        with self._lock:
            self._sync()
        # Keeps the membership alive while the caller works on a batch longer than the
        # session timeout (a slow model); polls and commits heartbeat as well.
        self._stop_beating = threading.Event()
        threading.Thread(target=self._beat, name=f"heartbeat-{group}", daemon=True).start()

    @property
    def member_id(self) -> str:
        return self._member.member_id

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._owned, key=lambda tp: (tp.topic, tp.partition))

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[Message]:
        deadline = time.monotonic() + max_wait_s
        sleep = self._first_sleep
        with self._lock:
            self._check_open()
            self._last_poll = time.monotonic()
            while True:
                if time.monotonic() >= self._next_heartbeat:
                    self._sync()
                batch = self._fetch(max(max_records, 1))
                if batch is None:  # the group changed under us: adopt the new assignment
                    self._sync()
                    continue
                left = deadline - time.monotonic()
                if batch or left <= 0:
                    return batch
                woken = self._doorbell.wait(min(sleep, left))
                if not woken and self._doorbell.rings and time.monotonic() >= deadline:
                    return []  # no bell rang until the deadline: nothing new to read
                sleep = self._first_sleep if woken else min(sleep * 2, _MAX_SLEEP_S)

    def commit(self, messages: Sequence[Message], *, wait: bool = True) -> None:
        """Commit per partition; partitions this member lost are refused with FencedError.
        Always stored when this returns, whatever ``wait`` says (a local transaction).

        The offsets of partitions it still owns are stored even when others are
        refused, so their messages are not redelivered to anyone. A batch polled before
        this member lost a partition and got it back may end behind what the owner in
        between committed, or beyond what this member has read since: an offset never
        moves back, and this member never hands out again what it committed.
        """
        offsets = _next_offsets(messages)
        if not offsets:
            return
        with self._lock:
            self._check_open()
            known = dict(self._owned)
            # A heartbeat rewrites the member's row (a page in the log): only when due.
            beat = time.monotonic() >= self._next_heartbeat

            def work(conn: sqlite3.Connection) -> list[TopicPartition]:
                if beat:
                    groups.heartbeat(conn, self._member, now_ms())
                lost = groups.fenced(known, groups.owned(conn, self._member), list(offsets))
                kept = {tp: offset for tp, offset in offsets.items() if tp not in lost}
                groups.advance_offsets(conn, self._member.group, kept)
                if groups.generation(conn, self._member.group) != self._generation:
                    self._adopt(conn)
                return lost

            lost = run(self._conn, work)
            for tp, offset in offsets.items():
                if tp not in lost:
                    self._positions[tp] = max(self._positions[tp], offset)
            if beat:
                self._next_heartbeat = time.monotonic() + self._heartbeat_every_s
        if lost:
            names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in lost)
            raise FencedError(
                f"commit refused: member {self.member_id} of group {self._member.group!r} "
                f"no longer owns {names} (taken over after a rebalance or a stall longer "
                "than the session timeout); their messages go to the new owner, the other "
                "partitions' offsets were committed; poll again"
            )

    def close(self) -> None:
        self._stop_beating.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                run(self._conn, lambda conn: groups.leave(conn, self._member))
            finally:
                self._doorbell.close()
                self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BusError(f"consumer {self.member_id} is closed; create a new one")

    def _beat(self) -> None:
        """Heartbeat when the owner has not for a while, unless it stopped polling for
        longer than ``max_poll_interval_s`` (a stuck worker): then the group replaces it.

        Never adopts a new assignment: the next poll does, and a commit for a partition
        lost meanwhile is fenced.
        """
        while not self._stop_beating.wait(self._heartbeat_every_s / 2):
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                if now < self._next_heartbeat:
                    continue
                if now - self._last_poll > self._max_poll_interval_s:
                    continue
                try:
                    run(self._conn, lambda conn: groups.heartbeat(conn, self._member, now_ms()))
                except BusError as exc:  # the next poll or commit meets it and says so
                    log.warning("heartbeat of %s failed: %s", self.member_id, exc)
                    continue
                self._next_heartbeat = time.monotonic() + self._heartbeat_every_s

    def _sync(self) -> None:
        """Heartbeat (rebalancing if membership changed) and adopt the current assignment."""

        def work(conn: sqlite3.Connection) -> None:
            groups.heartbeat(conn, self._member, now_ms())
            self._adopt(conn)

        run(self._conn, work)
        self._next_heartbeat = time.monotonic() + self._heartbeat_every_s

    def _adopt(self, conn: sqlite3.Connection) -> None:
        """Take the stored assignment; a gained (or re-epoched) partition resumes at its commit."""
        self._generation = groups.generation(conn, self._member.group)
        now_owned = groups.owned(conn, self._member)
        positions = {}
        for tp, epoch in now_owned.items():
            if self._owned.get(tp) == epoch and tp in self._positions:
                positions[tp] = self._positions[tp]
            else:
                positions[tp] = self._starting_offset(conn, tp)
        self._owned = now_owned
        self._positions = positions

    def _starting_offset(self, conn: sqlite3.Connection, tp: TopicPartition) -> int:
        stored = groups.committed(conn, self._member.group, tp)
        low, high = conn.execute(
            "SELECT low, high FROM partitions WHERE topic_id = ? AND part = ?",
            (self._topic_ids[tp.topic], tp.partition),
        ).fetchone()
        if stored is not None:
            return max(int(stored), int(low))
        return int(low) if self._start == "earliest" else int(high)

    def _fetch(self, max_records: int) -> list[Message] | None:
        """Read the next messages fairly across owned partitions; None if the group changed."""
        order = list(self._positions)
        if order:
            self._rotation = (self._rotation + 1) % len(order)
            order = order[self._rotation :] + order[: self._rotation]

        def work(conn: sqlite3.Connection) -> list[Message] | None:
            read_up_to.clear()  # in case SQLITE_BUSY made run() start over
            if groups.generation(conn, self._member.group) != self._generation:
                return None
            available = [self._available(conn, tp) for tp in order]
            shares = fair_shares([count for _, count in available], max_records)
            batch: list[Message] = []
            for tp, (start, _), take in zip(order, available, shares, strict=True):
                rows = self._read(conn, tp, start, take) if take else []
                if rows:
                    batch.extend(rows)
                    read_up_to[tp] = rows[-1].offset + 1
            return batch

        read_up_to: dict[TopicPartition, int] = {}
        batch = run(self._conn, work, transaction="read")
        self._positions.update(read_up_to)
        return batch

    def _available(self, conn: sqlite3.Connection, tp: TopicPartition) -> tuple[int, int]:
        """(first offset to read, how many are there) for ``tp``; skips what retention dropped."""
        low, high = conn.execute(
            "SELECT low, high FROM partitions WHERE topic_id = ? AND part = ?",
            (self._topic_ids[tp.topic], tp.partition),
        ).fetchone()
        start = max(self._positions[tp], int(low))
        return start, max(int(high) - start, 0)

    def _read(
        self, conn: sqlite3.Connection, tp: TopicPartition, start: int, count: int
    ) -> list[Message]:
        rows = conn.execute(
            "SELECT seq, key, value, ts FROM messages "
            "WHERE topic_id = ? AND part = ? AND seq >= ? AND seq < ? ORDER BY seq",
            (self._topic_ids[tp.topic], tp.partition, start, start + count),
        )
        return [
            Message(tp.topic, tp.partition, seq, key, value, ts) for seq, key, value, ts in rows
        ]


def _next_offsets(messages: Sequence[Message]) -> dict[TopicPartition, int]:
    """The offset after the last of ``messages`` in each partition they come from."""
    # Plain tuples while scanning: hashing a frozen dataclass per message is slow.
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        where = (message.topic, message.partition)
        if message.offset >= last.get(where, -1):
            last[where] = message.offset
    return {TopicPartition(*where): offset + 1 for where, offset in last.items()}


def fair_shares(available: Sequence[int], budget: int) -> list[int]:
    """Split ``budget`` records over partitions so none starves (water-filling).

    Each round gives every partition that still has messages an equal share of what
    is left; partitions earlier in the list get the remainder of an uneven split.
    """
    shares = [0] * len(available)
    left = budget
    while left > 0:
        open_ = [i for i, n in enumerate(available) if n > shares[i]]
        if not open_:
            break
        each = max(left // len(open_), 1)
        for i in open_:
            take = min(each, available[i] - shares[i], left)
            shares[i] += take
            left -= take
            if left == 0:
                break
    return shares
