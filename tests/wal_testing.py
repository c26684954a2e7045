"""Helpers for tests of the embedded bus's write-ahead log."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def readers_never_stop(database: Path) -> Iterator[None]:
    """Two readers, one of them always in a transaction (as polling workers are)."""
    stop = threading.Event()

    def read(offset_s: float) -> None:
        conn = sqlite3.connect(database, isolation_level=None)
        time.sleep(offset_s)
        while not stop.is_set():
            conn.execute("BEGIN")
            conn.execute("SELECT COUNT(*) FROM partitions").fetchone()
            time.sleep(0.02)
            conn.execute("COMMIT")
        conn.close()

    readers = [threading.Thread(target=read, args=(s,)) for s in (0.0, 0.01)]
    for reader in readers:
        reader.start()
    try:
        yield
    finally:
        stop.set()
        for reader in readers:
            reader.join()


def frames_in_log(database: Path) -> int:
    """Frames in the write-ahead log of ``database`` since it last started over."""
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        _, in_log, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        conn.close()
    return int(in_log)
