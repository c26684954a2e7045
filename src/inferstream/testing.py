"""Tools for testing pipelines: run every stage of a pipeline in threads of this process.

Real workers on the real bus and store, just without child processes, so a test can
feed inputs, wait for results and stop everything cleanly in one ``with`` block::

    with pipeline_threads(spec):
        ...  # produce inputs, poll the store
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from inferstream.bus import open_bus
from inferstream.pipeline import PipelineSpec
from inferstream.runner import ensure_topics, make_worker
from inferstream.tracing import NO_TRACING, Tracing


@contextmanager
def pipeline_threads(
    spec: PipelineSpec, replicas: int | None = None, tracing: Tracing = NO_TRACING
) -> Iterator[None]:
    """Every stage of ``spec`` (``replicas`` each, default the file's) in threads, making
    their spans with ``tracing``."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    with ExitStack() as stack:
        admin = open_bus(spec.bus)
        stack.callback(admin.close)
        ensure_topics(admin, spec)
        for stage in spec.stages:
            for replica in range(replicas or stage.replicas):
                bus = open_bus(spec.bus)
                stack.callback(bus.close)
                worker = make_worker(spec, stage.name, bus, replica, tracing)
                thread = threading.Thread(
                    target=worker.run, args=(stop,), name=f"{stage.name}-{replica}"
                )
                thread.start()
                threads.append(thread)
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
