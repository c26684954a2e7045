"""``inferstream up``: every stage of a pipeline as supervised processes on one machine.

Each replica of each stage is an ``inferstream worker`` child process. A child that
crashes is restarted (with backoff, so a stage that cannot start does not spin); one
that exits with status 2, the CLI's "your configuration is wrong", is not, since a
restart cannot fix it. SIGINT (Ctrl-C) or SIGTERM sends SIGTERM to every child, which
drains its batch in hand and commits, then waits up to ``drain_timeout_s`` before
killing stragglers; a second Ctrl-C kills them at once. A worker whose supervisor
died (kill -9) notices and drains, so none is left orphaned. Extra processes
(the API server) are supervised the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inferstream.errors import InferstreamError
from inferstream.pipeline import PipelineSpec

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
#: Exit status of ``inferstream`` commands for a configuration error.
CONFIG_ERROR_EXIT = 2
#: Set for children: the supervisor's pid, so a worker drains when its parent is gone.
SUPERVISOR_PID_ENV = "INFERSTREAM_SUPERVISOR_PID"


@dataclass
class Child:
    """One supervised process and its restart history."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)
    #: Exited with a configuration error: not restarted.
    failed: bool = False


def worker_argv(spec: PipelineSpec, stage: str, replica: int) -> list[str]:
    assert spec.source is not None, "supervised pipelines come from a file"
    return [
        sys.executable, "-m", "inferstream", "worker", str(spec.source),
        "--stage", stage, "--replica", str(replica),
        "--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs,
    ]  # fmt: skip


def pipeline_children(spec: PipelineSpec) -> list[Child]:
    """A worker per stage replica, and the trainer when the file retrains a model."""
    workers = [
        Child(name=f"{stage.name}-{replica}", argv=worker_argv(spec, stage.name, replica))
        for stage in spec.stages
        for replica in range(stage.replicas)
    ]
    if not spec.retraining:
        return workers
    assert spec.source is not None, "supervised pipelines come from a file"
    trainer = [
        sys.executable, "-m", "inferstream", "trainer", str(spec.source),
        "--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs,
    ]  # fmt: skip
    return [*workers, Child(name="trainer", argv=trainer)]


def api_child(spec: PipelineSpec, host_port: str, options: Sequence[str] = ()) -> Child:
    """The service API (``inferstream serve``, with ``options``) as one more supervised
    child."""
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        from inferstream.errors import ConfigError

        raise ConfigError(f"--serve {host_port!r}: use HOST:PORT, e.g. 127.0.0.1:8000")
    assert spec.source is not None, "supervised pipelines come from a file"
    argv = [
        sys.executable, "-m", "inferstream", "serve", str(spec.source),
        "--host", host, "--port", port,
        "--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs, *options,
    ]  # fmt: skip
    return Child(name="api", argv=argv)


class Supervisor:
    """Starts children, restarts the ones that die, and stops them all on request."""

    def __init__(
        self,
        children: Sequence[Child],
        drain_timeout_s: float = 30.0,
        housekeeping: Callable[[], object] = lambda: None,
        housekeeping_interval_s: float = 60.0,
    ) -> None:
        self.children = list(children)
        self.drain_timeout_s = drain_timeout_s
        #: Periodic chores beside supervision, e.g. applying topic retention.
        self.housekeeping = housekeeping
        self.housekeeping_interval_s = housekeeping_interval_s
        self._next_housekeeping = 0.0
        self.stop = threading.Event()
        self.exit_code = 0
        self._metrics_dir = tempfile.TemporaryDirectory(prefix="inferstream-metrics-")
        self.env = dict(
            os.environ,
            PROMETHEUS_MULTIPROC_DIR=self._metrics_dir.name,
            **{SUPERVISOR_PID_ENV: str(os.getpid())},
        )

    @property
    def metrics_dir(self) -> Path:
        return Path(self._metrics_dir.name)

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, env=self.env)
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    def poll_once(self) -> None:
        """Start children that are due, and schedule a restart for those that exited."""
        now = time.monotonic()
        for child in self.children:
            if child.failed:
                continue
            if child.proc is None:
                if now >= child.next_start:
                    self._start(child)
                continue
            code = child.proc.poll()
            if code is None:
                if now - child.started_at > 60:
                    child.restarts = 0  # it ran for a while: forget old crashes
                continue
            self._exited(child, code, now)
        if all(child.failed for child in self.children):
            log.error("no process could start; fix the errors above and run again")
            self.exit_code = CONFIG_ERROR_EXIT
            self.stop.set()

    def _exited(self, child: Child, code: int, now: float) -> None:
        child.proc = None
        if code == CONFIG_ERROR_EXIT:
            log.error(
                "%s stopped on a configuration error (see above); not restarting it", child.name
            )
            child.failed = True
            return
        delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
        log.warning("%s exited with code %s; restarting in %.1fs", child.name, code, delay)
        child.restarts += 1
        child.next_start = now + delay

    def _on_signal(self, _signum: int, _frame: object) -> None:
        if self.stop.is_set():  # a second Ctrl-C: stop waiting for the drain
            log.warning("second interrupt: killing the workers without draining")
            for child in self.children:
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.kill()
        self.stop.set()

    def run(self) -> None:
        """Supervise until SIGINT/SIGTERM, then drain every child."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            while not self.stop.is_set():
                self.poll_once()
                self._housekeep()
                self.stop.wait(0.2)
        finally:
            self.shutdown()
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _housekeep(self) -> None:
        now = time.monotonic()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + self.housekeeping_interval_s
        try:
            self.housekeeping()
        except InferstreamError as exc:  # a chore failing must not stop supervision
            log.warning(
                "housekeeping failed: %s; retrying in %.0fs", exc, self.housekeeping_interval_s
            )

    def shutdown(self) -> None:
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_timeout_s
        for proc in running:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning(
                    "pid %d did not drain within %.0fs; killing it", proc.pid, self.drain_timeout_s
                )
                proc.kill()
                proc.wait()
        self._metrics_dir.cleanup()
