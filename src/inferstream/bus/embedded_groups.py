"""Consumer-group membership of the embedded bus: heartbeats, assignment, fencing.

Members of a group are rows with an expiry (last heartbeat + session timeout). Any
member that notices a change — a join, a leave, a member whose heartbeat expired —
rebalances inside the same write transaction: it bumps the group's generation and
recomputes who owns which partition, deterministically from the sorted member ids
(partition ``p`` of every topic to member ``p mod n``: co-partitioned). A partition whose owner
changes gets a new *epoch*; a member remembers the epoch it was given, and a commit
whose epoch no longer matches is refused (fencing), so a member that stalled past
its session timeout, and was removed by another member meanwhile, can neither
commit nor keep delivering a partition it lost. A late member that nobody removed
simply carries on: nothing was taken over.

Every function here runs inside a transaction opened by the caller.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from inferstream.bus.base import TopicPartition

#: Ownership of one partition: the epoch this member was given it at.
Owned = dict[TopicPartition, int]


@dataclass(frozen=True, slots=True)
class Member:
    """One member of one group, as stored in the ``members`` table."""

    group: str
    member_id: str
    topics: tuple[str, ...]
    session_timeout_ms: int


def heartbeat(conn: sqlite3.Connection, member: Member, now: int) -> None:
    """Refresh ``member``'s heartbeat, expire dead members, rebalance if membership changed.

    A member that was expired by another one (it stalled) joins again here as new.
    """
    expired = conn.execute(
        "DELETE FROM members WHERE grp = ? AND expires_ms < ? AND member_id != ?",
        (member.group, now, member.member_id),
    ).rowcount
    expires = now + member.session_timeout_ms
    # Still present although late: nobody has taken anything over (expiry and this
    # refresh are serialised by the write lock), so the member carries on.
    own = conn.execute(
        "UPDATE members SET expires_ms = ? WHERE grp = ? AND member_id = ?",
        (expires, member.group, member.member_id),
    ).rowcount
    if own == 0:
        # Removed by another member: its old ownership must not carry over, so it
        # rejoins as a new member and every epoch it held moves on.
        conn.execute(
            "INSERT INTO members (grp, member_id, topics, expires_ms) VALUES (?, ?, ?, ?)",
            (member.group, member.member_id, "\n".join(member.topics), expires),
        )
        _drop_ownership(conn, member)
    if expired or own == 0:
        rebalance(conn, member.group)


def leave(conn: sqlite3.Connection, member: Member) -> None:
    """Remove ``member`` and hand its partitions to the others at once."""
    conn.execute(
        "DELETE FROM members WHERE grp = ? AND member_id = ?", (member.group, member.member_id)
    )
    _drop_ownership(conn, member)
    rebalance(conn, member.group)


def _drop_ownership(conn: sqlite3.Connection, member: Member) -> None:
    # Bumping the epoch fences the old incarnation even when the rebalance gives
    # the same partition straight back to the same member id.
    conn.execute(
        "UPDATE assignments SET member_id = '', epoch = epoch + 1 WHERE grp = ? AND member_id = ?",
        (member.group, member.member_id),
    )


def rebalance(conn: sqlite3.Connection, group: str) -> None:
    """Bump the group's generation and reassign its partitions among the live members."""
    conn.execute(
        "INSERT INTO groups (name, generation) VALUES (?, 1) "
        "ON CONFLICT (name) DO UPDATE SET generation = generation + 1",
        (group,),
    )
    members = conn.execute(
        "SELECT member_id, topics FROM members WHERE grp = ? ORDER BY member_id", (group,)
    ).fetchall()
    subscribers: dict[str, list[str]] = {}
    for member_id, topics in members:
        for topic in topics.split("\n"):
            subscribers.setdefault(topic, []).append(member_id)
    current = {
        (topic, part): owner
        for topic, part, owner in conn.execute(
            "SELECT topic, part, member_id FROM assignments WHERE grp = ?", (group,)
        )
    }
    changes = []
    for topic in sorted(subscribers):
        for part in range(_partition_count(conn, topic)):
            # By partition number, like Kafka's range assignor: partition p of every
            # topic a member reads goes to the same member, so a stage joining several
            # topics meets every message of one key in one worker (co-partitioning).
            owners = subscribers[topic]
            owner = owners[part % len(owners)]
            if current.get((topic, part)) != owner:
                changes.append((group, topic, part, owner))
    conn.executemany(
        "INSERT INTO assignments (grp, topic, part, member_id, epoch) VALUES (?, ?, ?, ?, 1) "
        "ON CONFLICT (grp, topic, part) DO UPDATE "
        "SET member_id = excluded.member_id, epoch = epoch + 1",
        changes,
    )


def _partition_count(conn: sqlite3.Connection, topic: str) -> int:
    row = conn.execute("SELECT partitions FROM topics WHERE name = ?", (topic,)).fetchone()
    return int(row[0]) if row else 0


def live_members(conn: sqlite3.Connection, group: str, now: int) -> int:
    """Members of ``group`` whose heartbeat has not expired at ``now``.

    An expired member still has its row until another member's heartbeat removes it,
    so the rows alone would count a crashed worker for ever in an idle group.
    """
    row = conn.execute(
        "SELECT COUNT(*) FROM members WHERE grp = ? AND expires_ms >= ?", (group, now)
    ).fetchone()
    return int(row[0])


def generation(conn: sqlite3.Connection, group: str) -> int:
    row = conn.execute("SELECT generation FROM groups WHERE name = ?", (group,)).fetchone()
    return int(row[0]) if row else 0


def owned(conn: sqlite3.Connection, member: Member) -> Owned:
    """Partitions ``member`` owns now, with their epochs."""
    rows = conn.execute(
        "SELECT topic, part, epoch FROM assignments WHERE grp = ? AND member_id = ?",
        (member.group, member.member_id),
    )
    return {TopicPartition(topic, part): epoch for topic, part, epoch in rows}


def committed(conn: sqlite3.Connection, group: str, tp: TopicPartition) -> int | None:
    row = conn.execute(
        "SELECT next_offset FROM offsets WHERE grp = ? AND topic = ? AND part = ?",
        (group, tp.topic, tp.partition),
    ).fetchone()
    return None if row is None else int(row[0])


def store_offsets(conn: sqlite3.Connection, group: str, offsets: dict[TopicPartition, int]) -> None:
    conn.executemany(
        "INSERT INTO offsets (grp, topic, part, next_offset) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (grp, topic, part) DO UPDATE SET next_offset = excluded.next_offset",
        [(group, tp.topic, tp.partition, offset) for tp, offset in offsets.items()],
    )


def advance_offsets(
    conn: sqlite3.Connection, group: str, offsets: dict[TopicPartition, int]
) -> None:
    """Store ``offsets`` where they are ahead of the stored ones (a commit); unlike
    :func:`store_offsets` (a seek), never moves a group's offset back."""
    conn.executemany(
        "INSERT INTO offsets (grp, topic, part, next_offset) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (grp, topic, part) DO UPDATE "
        "SET next_offset = MAX(next_offset, excluded.next_offset)",
        [(group, tp.topic, tp.partition, offset) for tp, offset in offsets.items()],
    )


def fenced(before: Owned, now: Owned, partitions: Sequence[TopicPartition]) -> list[TopicPartition]:
    """Partitions among ``partitions`` this member no longer owns at the epoch it knew."""
    return sorted(
        (tp for tp in set(partitions) if tp not in before or now.get(tp) != before[tp]),
        key=lambda tp: (tp.topic, tp.partition),
    )


def reload_topic(conn: sqlite3.Connection, group: str, topic: str) -> None:
    """Make running members re-read ``topic``'s committed offsets (after a seek)."""
    conn.execute(
        "UPDATE assignments SET epoch = epoch + 1 WHERE grp = ? AND topic = ?", (group, topic)
    )
    conn.execute("UPDATE groups SET generation = generation + 1 WHERE name = ?", (group,))
