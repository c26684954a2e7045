"""Replay requests: how an admin asks a stage's running workers to step aside.

Kafka moves a consumer group's offsets only while the group has no members, and a
stateful stage must also forget the state it built from the old position. So a
replay is a short conversation through a table in the pipeline's results-store
database, which the admin and every worker already reach:

1. the admin (:func:`inferstream.stage_replay.replay_stage`) writes a request for the
   stage's group on the :class:`ReplayBoard`;
2. each worker of the stage sees it (:meth:`ReplayWatch.requested`, at most once a
   second), closes its consumer, which leaves the group, and waits
   (:meth:`ReplayWatch.wait_applied`);
3. once the group is empty, the admin moves the offsets, resets the stage's durable
   state and marks the request applied;
4. the workers open their consumers again and read from the new position.

This module is the board and the workers' side; :mod:`inferstream.stage_replay` is
the admin's. A request is marked applied however the admin's side ends (also when
nothing moved), because an unapplied one holds the stage's workers until their own
wait (:data:`WAIT_APPLIED_S`) runs out.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)

from inferstream.envelope import now_us
from inferstream.errors import StoreError
from inferstream.store.engine import SideTables

log = logging.getLogger(__name__)

#: How long a worker waits for a replay to be applied before it resumes anyway; longer
#: than the admin's own timeout (60 s by default), so it normally hears the outcome.
WAIT_APPLIED_S = 120.0
#: How often a waiting worker, and the admin waiting for an empty group, ask again.
POLL_S = 0.2

metadata = MetaData()

stage_replays = Table(
    "stage_replays",
    metadata,
    Column("grp", Text, primary_key=True),
    Column("generation", Integer, primary_key=True, autoincrement=False),
    Column("target", Text, nullable=False),
    #: A JSON list of topic names.
    Column("topics", Text, nullable=False),
    Column("requested_at_us", BigInteger, nullable=False),
    Column("applied_at_us", BigInteger, nullable=True),
)


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """One request on the board: the newest one of a group is the one that counts."""

    generation: int
    target: str
    topics: tuple[str, ...]
    applied: bool


class ReplayBoard(SideTables):
    """Replay requests per consumer group, in a table of the results-store database."""

    noun = "the replay board"

    def __init__(self, url: str) -> None:
        super().__init__(url, metadata)

    def request(self, group: str, topics: Sequence[str], target_text: str) -> int:
        """Ask ``group``'s workers to pause for a replay; return the request's generation."""
        with self._errors(f"ask group {group!r} to replay in"):
            return self._insert_next(group, topics, target_text)

    def latest(self, group: str) -> ReplayRequest | None:
        """The newest request for ``group``; None when it never had one."""
        table = stage_replays
        stmt = (
            select(table.c.generation, table.c.target, table.c.topics, table.c.applied_at_us)
            .where(table.c.grp == group)
            .order_by(table.c.generation.desc())
            .limit(1)
        )
        action = f"read the replays of group {group!r} from"
        with self._errors(action), self._connection() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        topics = tuple(json.loads(row.topics))
        return ReplayRequest(row.generation, row.target, topics, row.applied_at_us is not None)

    def mark_applied(self, group: str, generation: int) -> None:
        """Let the workers waiting on request ``generation`` of ``group`` resume."""
        table = stage_replays
        stmt = (
            update(table)
            .where(
                table.c.grp == group,
                table.c.generation == generation,
                table.c.applied_at_us.is_(None),
            )
            .values(applied_at_us=now_us())
        )
        action = f"mark replay {generation} of group {group!r} applied in"
        with self._errors(action), self._transaction() as conn:
            conn.execute(stmt)

    def _insert_next(self, group: str, topics: Sequence[str], target_text: str) -> int:
        table = stage_replays
        newest = select(func.coalesce(func.max(table.c.generation), 0)).where(table.c.grp == group)
        with self._transaction() as conn:
            if not self._sqlite:
                # Two admins must not both read the same newest generation. Requests are
                # rare, so the whole table is locked against writers (readers, the
                # workers' watches, go on); SQLite's BEGIN IMMEDIATE does the same.
                conn.exec_driver_sql("LOCK TABLE stage_replays IN EXCLUSIVE MODE")
            generation = int(conn.execute(newest).scalar_one()) + 1
            row = {
                "grp": group,
                "generation": generation,
                "target": target_text,
                "topics": json.dumps(list(topics)),
                "requested_at_us": now_us(),
            }
            conn.execute(insert(table).values(row))
        return generation


class ReplayWatcher(Protocol):
    """What a worker loop asks between batches: :class:`ReplayWatch` or :class:`NoReplays`."""

    def requested(self) -> bool:
        """True when the worker should close its consumer and call :meth:`wait_applied`."""
        ...

    def wait_applied(self, stop: threading.Event, timeout_s: float = WAIT_APPLIED_S) -> bool:
        """Block until the replay is applied (True), or ``stop`` is set or time runs out."""
        ...

    def close(self) -> None:
        """Release the board's connections (the worker is leaving)."""
        ...


class ReplayWatch:
    """A worker's view of the board for its group (one per consumer; not thread-safe).

    A request already applied when the watch is made never triggers it; one still
    pending does, so a worker started during a replay leaves the group as well.
    Store outages are logged and read as "no replay": they must not stop the stage.
    """

    def __init__(self, board: ReplayBoard, group: str, *, check_every_s: float = 1.0) -> None:
        self._board = board  # the watch's own: :meth:`close` closes it
        self._group = group
        self._check_every_s = check_every_s
        self._handled = 0
        self._outage = False
        # An applied request counts as handled on first sight, so starting from 0 lets
        # old requests pass and a pending one trigger; asking now makes that immediate.
        self._pending = self._unhandled(self._read_board()[1])
        self._next_check = time.monotonic() + check_every_s

    def requested(self) -> bool:
        """True when a request newer than the last one handled is waiting to be applied.

        Asks the board at most once every ``check_every_s``; between asks, repeats the
        last answer.
        """
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_every_s
            self._pending = self._unhandled(self._read_board()[1])
        return self._pending is not None

    def wait_applied(self, stop: threading.Event, timeout_s: float = WAIT_APPLIED_S) -> bool:
        """Wait, asking every :data:`POLL_S`, until the newest request is applied.

        True when it was: the group's offsets (and state) moved, so reopen the consumer
        and drop anything held from before. False when ``stop`` was set, or when
        ``timeout_s`` passed (the admin is gone): the worker resumes where it was, and
        this request no longer triggers :meth:`requested`.
        """
        deadline = time.monotonic() + timeout_s
        while not self._settled():
            if time.monotonic() >= deadline:
                self._give_up(timeout_s)
                return False
            if stop.wait(POLL_S):
                return False
        return True

    def _settled(self) -> bool:
        """Whether no request is left to apply (False while the board is unreachable)."""
        reachable, latest = self._read_board()
        if not reachable:
            return False
        if latest is not None and not latest.applied and latest.generation > self._handled:
            self._pending = latest  # the newest one: a second replay supersedes the first
            return False
        if latest is not None:
            self._handled = max(self._handled, latest.generation)
        self._pending = None
        return True

    def _read_board(self) -> tuple[bool, ReplayRequest | None]:
        """(reachable, the newest request); an outage is logged once, as it starts."""
        try:
            latest = self._board.latest(self._group)
        except StoreError as exc:
            if not self._outage:
                log.warning(
                    "cannot check for replays of group %s (will retry): %s", self._group, exc
                )
            self._outage = True
            return False, None
        self._outage = False
        return True, latest

    def _unhandled(self, latest: ReplayRequest | None) -> ReplayRequest | None:
        if latest is None or latest.generation <= self._handled:
            return None
        if latest.applied:
            # Applied between two asks (it did not need this worker): nothing to do.
            self._handled = latest.generation
            return None
        return latest

    def _give_up(self, timeout_s: float) -> None:
        pending = self._pending
        if pending is not None:
            self._handled = max(self._handled, pending.generation)
        self._pending = None
        log.warning(
            "replay of group %s was not applied within %.0fs; resuming where this worker "
            "was (run the replay again if it is still wanted)",
            self._group,
            timeout_s,
        )

    def close(self) -> None:
        self._board.close()


class NoReplays:
    """The watcher of a worker with no board: replay is never requested."""

    def requested(self) -> bool:
        return False

    def wait_applied(self, stop: threading.Event, timeout_s: float = WAIT_APPLIED_S) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release: it holds no board."""
