"""Helpers for tests that run pipelines as real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def worker_pids(pipeline: Path) -> list[int]:
    """Pids of the ``inferstream worker`` processes running ``pipeline``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmdline and str(pipeline).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()
