"""Run one stage of a pipeline in this process: the body of ``inferstream worker``.

Builds the stage's steps from the pipeline spec, makes sure its topics exist,
installs SIGTERM/SIGINT handlers that drain (finish the batch in hand, commit,
leave the group) and runs the :class:`~inferstream.worker.StageWorker` loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator

from inferstream.application import app_named
from inferstream.blobs import open_blob_store
from inferstream.bus import Bus, open_bus
from inferstream.pipeline import PipelineSpec, StageSpec
from inferstream.steps import Step, StepContext, build_step
from inferstream.worker import StageWorker

log = logging.getLogger(__name__)


def ensure_topics(bus: Bus, spec: PipelineSpec) -> None:
    """Create every topic the pipeline uses (idempotent), dead-letter topics included."""
    for stage in spec.stages:
        names = [stage.input, f"{stage.input}.dlq"] + ([stage.output] if stage.output else [])
        for name in names:
            bus.create_topic(name, spec.partitions(name.removesuffix(".dlq")))


def apply_retention(spec: PipelineSpec) -> int:
    """Drop what the pipeline's retention settings no longer keep; return how many."""
    if not spec.retention:
        return 0
    bus = open_bus(spec.bus)
    try:
        return sum(bus.apply_retention(topic, policy) for topic, policy in spec.retention.items())
    finally:
        bus.close()


def build_steps(spec: PipelineSpec, stage: StageSpec, worker_id: str) -> list[Step]:
    app = app_named(spec.app) if spec.app else None
    context = StepContext(
        pipeline=spec.name,
        stage=stage.name,
        worker=worker_id,
        store_url=spec.store,
        blobs=open_blob_store(spec.blobs),
        app=app,
    )
    app_steps = app.steps if app else {}
    return [build_step(step.ref, context, step.params, app_steps) for step in stage.steps]


def make_worker(spec: PipelineSpec, stage_name: str, bus: Bus, replica: int = 0) -> StageWorker:
    stage = spec.stage(stage_name)
    worker_id = f"{stage.name}-{replica}@{socket.gethostname()}:{os.getpid()}"
    return StageWorker(
        bus,
        pipeline=spec.name,
        stage=stage.name,
        input_topic=stage.input,
        output_topic=stage.output,
        steps=build_steps(spec, stage, worker_id),
        max_batch=stage.batch.max_size,
        max_wait_s=stage.batch.max_wait_ms / 1000,
        max_attempts=stage.max_attempts,
        worker_id=worker_id,
    )


@contextlib.contextmanager
def drain_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM or SIGINT, so the loop drains instead of dying mid-batch."""

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def watch_parent(stop: threading.Event) -> None:
    """Set ``stop`` if the supervisor that started this process dies (its pid is in the env)."""
    from inferstream.supervisor import SUPERVISOR_PID_ENV

    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if not supervisor:
        return

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != int(supervisor):
                log.warning("supervisor %s is gone: draining", supervisor)
                stop.set()

    threading.Thread(target=watch, name="watch-supervisor", daemon=True).start()


def lower_priority(nice: int) -> None:
    """Run this process at ``nice`` (never raising its priority, which needs privileges)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        log.info("running at nice %d", nice)


def run_stage(spec: PipelineSpec, stage_name: str, replica: int = 0) -> None:
    """Run ``stage_name`` until SIGTERM/SIGINT; drains cleanly."""
    stop = threading.Event()
    watch_parent(stop)
    lower_priority(spec.stage(stage_name).nice)
    bus = open_bus(spec.bus)
    try:
        ensure_topics(bus, spec)
        worker = make_worker(spec, stage_name, bus, replica)
        with drain_on_signals(stop):
            log.info("stage %s (%s) started on %s", stage_name, worker.worker_id, spec.bus)
            worker.run(stop)
        log.info("stage %s drained and stopped", stage_name)
    finally:
        bus.close()
