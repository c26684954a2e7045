"""``inferstream up`` as a process: configuration errors stop it, orphans drain themselves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from processes import wait_until, worker_pids

PIPELINE = """
name: sup
bus: sqlite:///{tmp}/bus.db
store: sqlite:///{tmp}/results.db
blobs: file://{tmp}/blobs
topics:
  jobs: {{partitions: 2}}
stages:
  - name: copy
    input: jobs
    output: copied
    steps: [passthrough]
    replicas: 2
    nice: 7
  - name: sink
    input: copied
    steps: [{{step: store_results, on_conflict: {conflict}}}]
"""


def _file(tmp_path: Path, conflict: str) -> Path:
    path = tmp_path / "sup.yaml"
    path.write_text(PIPELINE.format(tmp=tmp_path, conflict=conflict))
    return path


def test_a_stage_with_a_configuration_error_is_not_restarted(tmp_path: Path) -> None:
    pipeline = _file(tmp_path, "sometimes")
    log = tmp_path / "up.log"
    with log.open("w") as err:
        up = subprocess.Popen(
            [sys.executable, "-m", "inferstream", "up", str(pipeline)], stderr=err
        )
    try:
        assert wait_until(lambda: "not restarting it" in log.read_text(), 60), log.read_text()
        time.sleep(3)  # longer than the first restart backoff: a restart would show now
        assert up.poll() is None, "the healthy stage must keep running"
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in worker_pids(pipeline)]
        assert [c for c in commands if b"sink" in c] == []
        assert len(commands) == 2
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    assert log.read_text().count("on_conflict must be 'ignore' or 'update'") == 1


def test_workers_drain_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    pipeline = _file(tmp_path, "ignore")
    up = subprocess.Popen([sys.executable, "-m", "inferstream", "up", str(pipeline)])
    assert wait_until(lambda: len(worker_pids(pipeline)) == 3, 60), "workers did not start"
    os.kill(up.pid, signal.SIGKILL)
    up.wait()
    assert wait_until(lambda: not worker_pids(pipeline), 30), "orphaned workers kept running"


def test_a_stage_runs_at_its_nice_value(tmp_path: Path) -> None:
    """``nice: 7`` on a stage: its workers yield the CPU; the other stage keeps 0."""
    pipeline = _file(tmp_path, "ignore")
    up = subprocess.Popen([sys.executable, "-m", "inferstream", "up", str(pipeline)])
    try:
        assert wait_until(lambda: len(worker_pids(pipeline)) == 3, 60), "workers did not start"

        def niceness() -> dict[str, list[int]]:
            seen: dict[str, list[int]] = {}
            for pid in worker_pids(pipeline):
                stage = b"sink" if b"sink" in Path(f"/proc/{pid}/cmdline").read_bytes() else b"copy"
                seen.setdefault(stage.decode(), []).append(os.getpriority(os.PRIO_PROCESS, pid))
            return seen

        # The worker lowers its priority as it starts: wait for both replicas to have.
        assert wait_until(lambda: niceness().get("copy") == [7, 7], 30), niceness()
        assert niceness()["sink"] == [0]
        assert os.getpriority(os.PRIO_PROCESS, up.pid) == 0  # the supervisor keeps its own
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
