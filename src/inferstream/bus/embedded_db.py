"""SQLite plumbing of the embedded bus: URL settings, connections, schema, transactions.

Several OS processes share one database file with no server between them. WAL mode
lets readers run while one writer appends. Every write is a short ``BEGIN IMMEDIATE``
transaction, so a writer waits for the file lock up front instead of failing half
way. The waiting is ours, not SQLite's: its busy handler sleeps 1, 2, 5, 10, 15, 20,
25, ... ms between tries, so a lock held for 5 ms cost a waiting writer 8 ms and one
held 20 ms cost it 33 (measured: publishes of 34, 53 and 78 ms, the handler's sums).
Connections have no busy timeout; :func:`run` retries a transaction that meets
SQLITE_BUSY after at most :data:`_MAX_RETRY_SLEEP_S` until :data:`GIVE_UP_S` has passed.

Durability: ``synchronous=NORMAL`` in WAL mode (the default here) makes every
committed transaction survive the crash or ``kill -9`` of any process; only a power
loss or OS crash may lose the last few transactions. Add ``?synchronous=full`` to the
URL to fsync on every commit and survive those too, at some cost in throughput.
"""

from __future__ import annotations

import select
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl

from inferstream.errors import BusError, BusFullError, ConfigError

T = TypeVar("T")

#: How long a transaction keeps retrying on SQLITE_BUSY before it gives up.
GIVE_UP_S = 30.0
#: The longest sleep between two tries of a busy transaction (the first is 0.1 ms).
_MAX_RETRY_SLEEP_S = 0.001
#: Page size of a new bus file: producing scans of 33 KB costs ~30 % less CPU than
#: with 4 KB pages, and 1 KiB messages ~25 % less (measured; see docs/benchmarks.md).
PAGE_SIZE = 16_384
_SYNCHRONOUS = ("off", "normal", "full", "extra")
#: Bytes the write-ahead log's file keeps when the log starts over: above the size at
#: which the checkpointer starts it over (256 MB), so the file is reused as it is and
#: never cut back on a writer's path.
WAL_SIZE_LIMIT = 320 * 2**20
_PREFIX = "sqlite:///"

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic_id INTEGER NOT NULL,
    part INTEGER NOT NULL,
    low INTEGER NOT NULL DEFAULT 0,   -- first retained offset
    high INTEGER NOT NULL DEFAULT 0,  -- offset the next message gets
    PRIMARY KEY (topic_id, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    topic_id INTEGER NOT NULL,
    part INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    ts INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_position ON messages (topic_id, part, seq);
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL,
    member_id TEXT NOT NULL,
    topics TEXT NOT NULL,           -- subscribed topic names, newline separated
    expires_ms INTEGER NOT NULL,    -- last heartbeat + the member's session timeout
    PRIMARY KEY (grp, member_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS assignments (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,         -- bumped whenever the owner changes: the fencing token
    PRIMARY KEY (grp, topic, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, part)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class EmbeddedSettings:
    """What a ``sqlite:///path/to/bus.db?session_timeout_s=10`` URL says."""

    path: Path
    session_timeout_s: float = 10.0
    synchronous: str = "normal"
    #: A member that has not polled for this long stops heartbeating and is replaced.
    max_poll_interval_s: float = 300.0

    @classmethod
    def from_url(cls, url: str) -> EmbeddedSettings:
        if not url.startswith(_PREFIX):
            raise ConfigError(f"embedded bus URL {url!r} must look like sqlite:///path/to/bus.db")
        path_part, _, query = url[len(_PREFIX) :].partition("?")
        if not path_part:
            raise ConfigError(f"embedded bus URL {url!r} names no file; add a path after ///")
        params = dict(parse_qsl(query, strict_parsing=bool(query)))
        unknown = set(params) - {"session_timeout_s", "synchronous", "max_poll_interval_s"}
        if unknown:
            raise ConfigError(
                f"unknown option(s) {sorted(unknown)} in bus URL {url!r}; "
                "known: session_timeout_s, synchronous, max_poll_interval_s"
            )
        try:
            timeout = float(params.get("session_timeout_s", 10.0))
            max_poll = float(params.get("max_poll_interval_s", 300.0))
        except ValueError as exc:
            raise ConfigError(
                f"session_timeout_s and max_poll_interval_s in {url!r} must be numbers"
            ) from exc
        synchronous = params.get("synchronous", "normal").lower()
        if timeout <= 0 or max_poll <= 0 or synchronous not in _SYNCHRONOUS:
            raise ConfigError(
                f"bad option in {url!r}: session_timeout_s and max_poll_interval_s must be "
                f"> 0 and synchronous one of {', '.join(_SYNCHRONOUS)}"
            )
        return cls(Path(path_part), timeout, synchronous, max_poll)


def now_ms() -> int:
    """Wall-clock milliseconds: heartbeats and timestamps are compared across processes."""
    return time.time_ns() // 1_000_000


def connect(settings: EmbeddedSettings) -> sqlite3.Connection:
    """Open the bus file (creating it and its folder) with WAL and the schema in place."""
    settings.path.parent.mkdir(parents=True, exist_ok=True)
    # Transactions are explicit (isolation_level=None); the lock in each caller
    # makes sharing a connection between threads safe.
    conn = sqlite3.connect(settings.path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 0")  # run() waits, in finer steps than SQLite
    # Takes effect only while the file is still empty. Scans of ~33 KB span 9 pages of
    # 4 KB (the default) and 3 of 16 KB: fewer WAL frames to write and checksum.
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    # Switching to WAL takes an exclusive lock once per file; processes racing to
    # create the file retry.
    run(conn, lambda c: c.execute("PRAGMA journal_mode = WAL"), transaction="none")
    conn.execute(f"PRAGMA synchronous = {settings.synchronous}")
    # When the log starts over, its file is cut back to this.
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    # No checkpoint inside a writer's commit: a producer's checkpointer thread does
    # them off the writers' path (embedded_checkpoint).
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    run(conn, lambda c: c.executescript(SCHEMA), transaction="none")
    return conn


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def run(
    conn: sqlite3.Connection,
    work: Callable[[sqlite3.Connection], T],
    *,
    transaction: str = "write",
) -> T:
    """Run ``work`` in one transaction ("write", "read" or "none"), retrying on SQLITE_BUSY.

    Library errors become :class:`BusError`; errors raised by ``work`` itself pass through.
    """
    begin = {"write": "BEGIN IMMEDIATE", "read": "BEGIN", "none": None}[transaction]
    deadline = time.monotonic() + GIVE_UP_S
    delay = 0.0001
    while True:
        try:
            if begin is not None:
                conn.execute(begin)
            result = work(conn)
            if begin is not None:
                conn.execute("COMMIT")
            return result
        except sqlite3.OperationalError as exc:
            _rollback(conn)
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise _failure(exc) from exc
        except sqlite3.Error as exc:
            _rollback(conn)
            raise BusError(f"embedded bus database failed: {exc}; check the file") from exc
        except BaseException:
            _rollback(conn)
            raise
        # A relative wait, not time.sleep: Python 3.11 sleeps until an absolute
        # monotonic deadline (clock_nanosleep), which libfaketime's wrapper misreads
        # once a process's wall clock has been stepped; the clock fault test then
        # found an edge agent stuck in this loop (1 run in 2; 0 in 5 with select).
        select.select([], [], [], delay)
        delay = min(delay * 2, _MAX_RETRY_SLEEP_S)


def _failure(exc: sqlite3.OperationalError) -> BusError:
    """The error to raise for ``exc``, which retrying at once cannot cure."""
    if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL:
        return BusFullError(
            f"the embedded bus's disk is full ({exc}); free space on it, or move the bus "
            "to a bigger disk; the messages it holds are kept"
        )
    return BusError(
        f"embedded bus database failed: {exc}; check the file is writable "
        "and that no process holds it locked for long"
    )


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
