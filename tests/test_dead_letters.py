"""Poison messages on both bus backends: they end in ``<topic>.dlq`` with their error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from inferstream.builtin_steps import FailIf
from inferstream.bus import Bus, Message, Record
from inferstream.envelope import new_envelope, parse
from inferstream.routing import Router
from inferstream.worker import StageWorker


def _read_all(bus: Bus, topic: str, expected: int, timeout_s: float = 60.0) -> list[Message]:
    consumer = bus.consumer(f"reader-{time.monotonic_ns()}", [topic])
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        got += consumer.poll_batch(500, 0.5)
    consumer.close()
    return got


def test_poison_messages_are_dead_lettered_and_the_rest_flow(
    bus: Bus, unique: Callable[[str], str]
) -> None:
    topic, out = unique("in"), unique("out")
    for name in (topic, f"{topic}.dlq", out):
        bus.create_topic(name, 3)
    envs = [
        new_envelope(b"x", "text/plain", key=f"k{i}", attributes={"poison": str(int(i % 10 == 3))})
        for i in range(100)
    ]
    bus.produce(topic, [Record(e.partition_key.encode(), e.SerializeToString()) for e in envs])
    bus.produce(topic, [Record(b"k-junk", b"\x08\xff\xff garbage")])
    worker = StageWorker(
        bus, pipeline=unique("p"), stage="check", inputs=[topic], router=Router(outputs=(out,)),
        steps=[FailIf("poison", "1", permanent=False)], max_batch=20, max_wait_s=0.05,
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        outputs = _read_all(bus, out, 90)
        letters = [parse(m.value) for m in _read_all(bus, f"{topic}.dlq", 11)]
    finally:
        stop.set()
        thread.join(timeout=60)
    poison = {e.id for e in envs if e.attributes["poison"] == "1"}
    assert {parse(m.value).root_id for m in outputs} == {e.id for e in envs} - poison
    assert {e.id for e in letters if e.error.error_type == "ValueError"} == poison
    assert all(
        e.error.attempts == 3 and e.error.stage == "check" for e in letters if e.id in poison
    )
    assert all(e.error.topic == topic for e in letters)
    [junk] = [e for e in letters if e.error.error_type == "InvalidInput"]
    assert junk.payload.inline == b"\x08\xff\xff garbage"
