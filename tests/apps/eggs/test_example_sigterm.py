"""``kill <example>`` (SIGTERM, what a process manager or a terminal's closing sends)
stops the pipeline the example started, as Ctrl-C does: nothing is left running."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from processes import command_lines, wait_until


def _processes_using(folder: Path) -> list[int]:
    """Pids of the processes whose command line names ``folder`` (the example's workdir)."""
    named = str(folder).encode()
    return [pid for pid, args in command_lines().items() if any(named in a for a in args)]


@pytest.mark.slow
def test_sigterm_to_the_example_stops_its_pipeline(tmp_path: Path) -> None:
    work = tmp_path / "work"
    example = subprocess.Popen(
        [
            sys.executable, "-m", "inferstream", "example", "eggs", "--scans", "100000",
            "--rate", "50", "--pool", "16", "--no-serve", "--no-linger", "--workdir", str(work),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    with example:
        assert example.stdout is not None
        for line in example.stdout:  # the pipeline answered its warm-up scan: all running
            if line.startswith("sending"):
                break
        pipeline = [pid for pid in _processes_using(work) if pid != example.pid]
        assert len(pipeline) >= 5, f"expected the supervisor and its workers, got {pipeline}"
        example.send_signal(signal.SIGTERM)
        example.wait(timeout=120)
        assert wait_until(lambda: not _processes_using(work), 60), (
            f"still running after the example ended: {_processes_using(work)}"
        )
    assert example.returncode == 130  # as after Ctrl-C
