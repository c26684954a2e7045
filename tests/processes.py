"""Helpers for tests that run pipelines as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def command_lines() -> dict[int, list[bytes]]:
    """Every running process's arguments, by pid (those that end meanwhile are left out)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
    return found


def worker_pids(pipeline: Path) -> list[int]:
    """Pids of the ``inferstream worker`` processes running ``pipeline``."""
    named = str(pipeline).encode()
    return [pid for pid, args in command_lines().items() if b"worker" in args and named in args]


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def with_short_sessions(bus_url: str) -> str:
    """``bus_url`` with short session timeouts, so a killed member's partitions move on
    quickly."""
    separator = "&" if "?" in bus_url else "?"
    if bus_url.startswith("sqlite"):
        return f"{bus_url}{separator}session_timeout_s=2"
    return f"{bus_url}{separator}session.timeout.ms=6000"


def start_up(pipeline: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """``inferstream up PIPELINE`` as a child, with the tests' own steps importable."""
    tests = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen(
        [sys.executable, "-m", "inferstream", "up", str(pipeline), "--drain-timeout", "20"],
        env=env,
        cwd=cwd,
    )
