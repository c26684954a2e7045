"""Helpers for tests that run stage workers on a real bus: produce, drain, run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from inferstream.bus import Bus, Message, Record
from inferstream.envelope import Envelope
from inferstream.worker import StageWorker


def produce_envelopes(bus: Bus, topic: str, envs: Sequence[Envelope]) -> None:
    bus.produce(
        topic, [Record(key=e.partition_key.encode(), value=e.SerializeToString()) for e in envs]
    )


def drain_topic(bus: Bus, topic: str, expected: int, timeout_s: float = 30.0) -> list[Message]:
    """Read ``topic`` as a fresh group until ``expected`` messages arrived (or time out);
    a short extra read catches anything beyond what was expected."""
    consumer = bus.consumer(f"reader-{time.monotonic_ns()}", [topic])
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            got += consumer.poll_batch(500, 0.2)
        got += consumer.poll_batch(500, 0.5)
    finally:
        consumer.close()
    return got


@contextmanager
def running(*workers: StageWorker) -> Iterator[threading.Event]:
    """Run ``workers`` in threads for the block; drain them at its end."""
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a worker did not drain after stop"


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
