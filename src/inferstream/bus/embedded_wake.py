"""Waking idle consumers of the embedded bus the moment a topic they read gets messages.

An idle consumer used to poll the log every 2-10 ms: up to 10 ms per topic hop spent
asleep while a message waited, and CPU spent on empty polls. Now every topic has a
bell: a one-byte file ``<bus>.db-bells/<topic id>`` that a producer reads after
each committed batch. Consumers watch their topics' bells with inotify
(:class:`Doorbell`) and wait on that file descriptor, so they wake as soon as a batch
is visible, and only for topics they read. The bell is rung after the commit, so a
woken consumer finds the messages.

Where inotify is missing (not Linux, or its instance limit is reached) a consumer
keeps timed polling (:class:`Sleeper`): the same behaviour, slower to react.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import sys
import time
from collections.abc import Iterable
from pathlib import Path

_IN_ACCESS = 0x00000001
_IN_MODIFY = 0x00000002  # how producers before 2026-12 rang, by writing the byte
_BROKEN = -1  # a bell this producer could not ring
log = logging.getLogger(__name__)


def bell_path(database: Path, topic_id: int) -> Path:
    return Path(f"{database}-bells") / str(topic_id)


class Bells:
    """The producer's side: rings a topic's bell after a batch is committed."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self._fds: dict[int, int] = {}

    def ring(self, topic_id: int) -> None:
        """Never raises: the batch is committed already, and a producer that saw an
        error would send it again. Unrung, consumers still find it on their next poll.
        A bell that failed once is not tried again (nor logged again) by this producer."""
        fd = self._fds.get(topic_id)
        if fd == _BROKEN:
            return
        try:
            if fd is None:
                path = bell_path(self.database, topic_id)
                fd = self._fds[topic_id] = _open_bell(path)
            # Reading, not writing: a write changes the file's mtime, a journalled
            # inode update that waits behind the disk's syncs (2-4 ms for 1 ring in
            # 100 at 500 scans/s). A read changes nothing; watchers see IN_ACCESS.
            os.pread(fd, 1, 0)
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            self._fds[topic_id] = _BROKEN
            log.warning(
                "cannot ring the bell of topic %s (%s); its consumers fall back to polling",
                topic_id,
                exc,
            )

    def close(self) -> None:
        for fd in self._fds.values():
            if fd != _BROKEN:
                os.close(fd)
        self._fds.clear()


class Sleeper:
    """Timed polling: the fallback where no file-change notification exists."""

    #: A wait ends only by its timeout, whatever was committed meanwhile.
    rings = False

    def wait(self, timeout_s: float) -> bool:
        """Sleep ``timeout_s``; True if woken by a bell (never, here)."""
        time.sleep(timeout_s)
        return False

    def close(self) -> None:
        """Nothing to release."""


class Doorbell:
    """An inotify watch on the bells of some topics: :meth:`wait` returns when one rings."""

    #: A wait ends as soon as a batch is committed to a watched topic.
    rings = True

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, database: Path, topic_ids: Iterable[int]) -> Doorbell | Sleeper:
        """A doorbell for ``topic_ids`` of the bus file ``database``, else a Sleeper."""
        libc = _libc()
        if libc is None:
            return Sleeper()
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return Sleeper()
        try:
            for topic_id in topic_ids:
                path = bell_path(database, topic_id)
                os.close(_open_bell(path))
                if libc.inotify_add_watch(fd, os.fsencode(path), _IN_ACCESS | _IN_MODIFY) < 0:
                    raise OSError(ctypes.get_errno(), f"inotify cannot watch {path}")
        except OSError as exc:
            os.close(fd)
            log.warning("consumers of %s poll on a timer: %s", database, exc)
            return Sleeper()
        return cls(fd)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a bell; True if one rang."""
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):  # raised once every event is read
            while os.read(self._fd, 4096):
                continue
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _open_bell(path: Path) -> int:
    """Open the bell, made first if missing: one byte, so that reading it is an access."""
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            os.pwrite(fd, b"\x01", 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc
