"""Counting the frames the embedded bus writes to its write-ahead log, from outside.

SQLite keeps the log's header in the ``-shm`` file next to the bus: ``mxFrame`` (the
frames in the log since it last started over) is a native-endian 32-bit word at byte
16. :class:`LogFrames` reads it every few milliseconds and sums what was written,
counting a drop of ``mxFrame`` as a restart of the log (the frames read just before it
are added; the few written between the last look and the restart are not). Read-only:
it takes no lock, so it never stands in a writer's way.

It reads in a child process: closing a file descriptor drops every POSIX lock the
process holds on that file, so a process with the bus open must never open and close
its ``-shm`` file beside SQLite (tried: the workers found "file is not a database").
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path


def bus_file(url: str) -> Path:
    """The file of a ``sqlite:///...`` bus URL."""
    return Path(urllib.parse.urlsplit(url).path)


class LogFrames:
    """Frames written to the log of the bus in ``database`` between start and stop."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._child: subprocess.Popen[str] | None = None
        self.frames = 0
        self.restarts = 0

    def start(self) -> LogFrames:
        self._child = subprocess.Popen(
            [sys.executable, __file__, str(self._database)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        assert self._child is not None
        out, _ = self._child.communicate("")  # closing its stdin stops it
        counts = json.loads(out)
        self.frames, self.restarts = counts["frames"], counts["restarts"]


def _sample(database: Path, every_s: float = 0.002) -> None:
    shm = os.open(database.with_name(database.name + "-shm"), os.O_RDONLY)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    frames = restarts = 0
    last = struct.unpack("=I", os.pread(shm, 4, 16))[0]
    while not stop.wait(every_s):
        now = struct.unpack("=I", os.pread(shm, 4, 16))[0]
        if now < last:
            restarts, frames = restarts + 1, frames + now
        else:
            frames += now - last
        last = now
    print(json.dumps({"frames": frames, "restarts": restarts}))


if __name__ == "__main__":
    _sample(Path(sys.argv[1]))
