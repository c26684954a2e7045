"""Keeping the embedded bus's write-ahead log short, off the producers' path.

Left to itself SQLite checkpoints inside a writer's ``COMMIT`` once the log passes
1,000 pages: the transaction that happens to cross the line copies the log into the
file and syncs it (28-57 ms at 900 scans/s on the flagship, measured), and every
message in that batch waits for it. Rewinding the log (``wal_checkpoint(RESTART)``)
blocks writers until it is done; run by a producer after its write every 5 s, it held
up to half a second of scans.

So bus connections turn automatic checkpoints off (:func:`embedded_db.connect`) and
each process that produces runs one :class:`Checkpointer` thread on its own
connection: a ``PASSIVE`` checkpoint every :data:`CHECKPOINT_EVERY_S` (it never
blocks readers or writers; when another process's checkpointer is at work it returns
at once), and a ``RESTART`` once the log holds :data:`RESTART_AT_BYTES`, right after a
passive checkpoint so that it has next to nothing left to copy. A restart never waits
for the readers and writers in its way: it gives up and tries again
:data:`RESTART_RETRY_S` later (after :data:`RESTART_ESCALATE_AFTER` tries in a row,
once with a short wait). SQLite releases the GIL while it checkpoints, so the thread
costs the process's own work nothing but the I/O.

What a restart still costs: it holds the write lock while it syncs the log and the
file, 12-78 ms on this machine's disk even with nothing to copy (measured). So restarts
are rare: once per
:data:`RESTART_AT_BYTES` of log (5-6 s at the flagship's 900 scans/s), or a quarter
of the disk's free space if less. The writer that starts the log over after a restart
also syncs its header; the checkpointer is that writer, without the sync
(:meth:`Checkpointer._start_over`). The log's file is kept at its size between
restarts (``journal_size_limit`` above :data:`RESTART_AT_BYTES`), so it is never cut
back on a writer's path. ``bench/bus_handoff.py`` measures the hand-off against
another commit.

A producer writing faster than the file takes the log in (a backlog written flat out)
would outrun the thread, and a restart cannot start while a writer always holds the
lock. Past :data:`WAL_MAX_BYTES` (the thread's last look at the log, plus what the
process wrote since) the producer therefore restarts the log itself after its write
(:meth:`Checkpointer.after_write`), trying again after each write until it succeeds:
the back-pressure that keeps the log bounded. Without restarts, with some reader always in
a transaction (every worker polls), the log only grew: 13 GB after 50 minutes at 1,000
scans/s in the soak, every read slower, until workers missed their heartbeats.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading

from inferstream.bus.embedded_db import EmbeddedSettings, connect

log = logging.getLogger(__name__)

#: How often the log is copied into the file (a passive checkpoint).
CHECKPOINT_EVERY_S = 0.2
#: The log is started over from its beginning once it holds this much (see
#: :class:`Checkpointer`): 5-6 s of the flagship's scans at 900/s. At 1 GB, the file
#: growing by 40 MB/s (new blocks to allocate and write back, rather than the same
#: ones rewritten) made the hand-off's p99 three times longer (measured).
RESTART_AT_BYTES = 256 * 2**20
#: After a restart that found a reader or writer in its way, the next try waits this
#: long. A restart never waits for them (a busy timeout of 0): writers queue behind a
#: waiting restart, and SQLite's busy handler sleeps 1, 2, 5, 10, ... ms between
#: looks, which held writers up to 105 ms (measured); a try costs them ~nothing.
RESTART_RETRY_S = 0.02
#: After this many restarts in a row found someone in their way (readers that never
#: all stop at once), the next one waits for them up to :data:`RESTART_WAIT_MS`,
#: holding writers that long at most; then it tries without waiting again.
RESTART_ESCALATE_AFTER = 25
RESTART_WAIT_MS = 100
#: Past this much in the log, a producer restarts it itself after writing.
WAL_MAX_BYTES = 2 * RESTART_AT_BYTES
#: How long that restart waits for the other writers and the readers; if they are still
#: in its way it gives up and the producer's next write tries again. With readers always
#: in a transaction a restart that has waited ~20 ms tends to wait out its whole timeout,
#: and the next try then succeeds at once: at 5 s, a backlog of 240 MB written flat out
#: past two readers took 6-11 s, 5.1 s of each in one failed try; at 200 ms, 1.0-1.1 s
#: with the log kept as short (measured).
VALVE_BUSY_TIMEOUT_MS = 200


class Checkpointer:
    """A daemon thread keeping one bus file's write-ahead log short; :meth:`close` stops it."""

    def __init__(self, settings: EmbeddedSettings) -> None:
        self._conn = connect(settings)  # with no busy timeout: a restart never waits
        self._synchronous = settings.synchronous
        self._folder = settings.path.parent
        self._page_bytes = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        #: Frames in the log at the last look (a plain int: the GIL keeps it whole).
        self._in_log = 0
        #: Payload bytes this process produced since that look began (the valve's
        #: estimate: it must not wait for the thread, whose look may take longer than a
        #: backlog written flat out, a passive checkpoint copying 100 MB on a slow disk).
        self._written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bus-checkpointer", daemon=True)
        self._thread.start()

    def _restart_at_frames(self) -> int:
        """Frames in the log that call for a restart: :data:`RESTART_AT_BYTES`, or a
        quarter of the disk's free space if that is less. The log's file is reused, not
        cut back, so on a nearly full disk it must stay small: once it has taken the
        last block, not even a checkpoint can run (the file must grow to take its
        pages), and every write fails until someone frees space."""
        try:
            disk = os.statvfs(self._folder)
        except OSError:
            return RESTART_AT_BYTES // self._page_bytes
        free = disk.f_bavail * disk.f_frsize
        return max(min(RESTART_AT_BYTES, free // 4) // self._page_bytes, 1)

    def _run(self) -> None:
        failed = 0
        try:
            wait = CHECKPOINT_EVERY_S
            while not self._stop.wait(wait):
                wait = CHECKPOINT_EVERY_S
                self._checkpoint("PASSIVE")  # first: a restart then copies next to nothing
                if self._in_log < self._restart_at_frames():  # (or another process restarted)
                    continue
                patience = RESTART_WAIT_MS if failed >= RESTART_ESCALATE_AFTER else 0
                if self._checkpoint("RESTART", patience):
                    failed, self._in_log, self._written = 0, 0, 0
                    self._start_over()
                else:
                    wait, failed = RESTART_RETRY_S, 0 if patience else failed + 1
        finally:
            self._conn.close()

    def _checkpoint(self, mode: str, patience_ms: int = 0) -> bool:
        """Run one checkpoint, waiting up to ``patience_ms`` for those in its way, and
        note the frames in the log; whether it did all it was asked (else: try later)."""
        written = self._written  # writes from now on may be missing from the look
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {patience_ms}")
            busy, in_log, _ = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:  # a full disk, say: producing reports it; retry later
            log.warning("could not checkpoint the embedded bus's log: %s", exc)
            return False
        if in_log >= 0:  # -1: it could not even look (another checkpoint was running)
            self._in_log = in_log
            self._written = max(self._written - written, 0)
        return not busy

    def _start_over(self) -> None:
        """Be the writer that starts the log over, right after a restart, without
        syncing the log's header.

        Whoever writes first after a restart writes the log's new header and, with
        ``synchronous=normal``, syncs it while holding the write lock: 20-60 ms of every
        writer's time on this machine's disk, once per restart. The sync guards nothing
        here: the restart has just copied the whole log into the file and synced it, and
        every later checkpoint syncs the log, header included, before it copies any of
        it. A power loss before that sync loses only the transactions written since,
        as ``synchronous=normal`` allows: the new header's salt does not match the old
        frames, nor the old header's the new ones, so recovery replays neither.

        The write is ``user_version`` set to its own value (one page). If another writer
        got the lock first, it starts the log over itself, syncing as before.
        """
        self._conn.execute("PRAGMA synchronous = off")
        try:
            with contextlib.suppress(sqlite3.Error):  # busy: another writer was first
                (version,) = self._conn.execute("PRAGMA user_version").fetchone()
                self._conn.execute(f"PRAGMA user_version = {int(version)}")
        finally:
            self._conn.execute(f"PRAGMA synchronous = {self._synchronous}")

    def after_write(self, conn: sqlite3.Connection, written: int) -> None:
        """Called by a producer after writing ``written`` bytes on its connection
        ``conn``: past :data:`WAL_MAX_BYTES` in the log (at the thread's last look,
        plus what this process wrote since) restart the log there, holding the
        producer meanwhile."""
        self._written += written
        if self._in_log * self._page_bytes + self._written <= WAL_MAX_BYTES:
            return
        try:
            conn.execute(f"PRAGMA busy_timeout = {VALVE_BUSY_TIMEOUT_MS}")
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as exc:  # never fails a produce: the next one tries again
            log.warning("could not checkpoint the embedded bus's log: %s", exc)
            return
        finally:
            conn.execute("PRAGMA busy_timeout = 0")
        if busy:
            log.info("the embedded bus's log was busy; it is checkpointed again later")
        else:
            self._in_log, self._written = 0, 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
