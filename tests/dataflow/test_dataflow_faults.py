"""Fault test: SIGKILL the workers of a join-and-window pipeline under load, on both buses.

``inferstream up`` runs photos -> split (fan-out) -> two graders -> join -> per-key
tumbling window, two replicas of each stateful stage, and restarts what is killed.
The outputs are compared by id with an offline reference computed from the same
inputs: every crop joined exactly once with both right grades, every window emitted
once with the right count, nothing late. Copies of one id on the bus (at-least-once)
must be identical: a redelivered batch may re-send an output, never change it.

``FAULT_KILLS`` / ``FAULT_PHOTOS`` make it longer (``make faults``).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from flow_testing import drain_topic, produce_envelopes
from pipeline_steps import expected_grade
from processes import start_up, wait_until, with_short_sessions, worker_pids

from inferstream.bus import Bus, Message
from inferstream.envelope import Envelope, new_envelope, parse

KILLS = int(os.environ.get("FAULT_KILLS", "8"))
PHOTOS = int(os.environ.get("FAULT_PHOTOS", "400"))
PARTS = 2
KEYS = 4
WINDOW_US = 1_000_000


def _pipeline(tmp_path: Path, bus_url: str, p: str) -> Path:
    bus_url = with_short_sessions(bus_url)
    path = tmp_path / "flow.yaml"
    # Lateness covers the longest stall a kill causes (a Kafka rejoin takes seconds):
    # an idle input's watermark follows the clock, so a shorter one would make the
    # results of a restarted branch late, which is right in production, not here.
    path.write_text(
        f"""
name: {p}faults
bus: {bus_url}
store: sqlite:///{tmp_path / "results.db"}
topics:
  {p}photos: 4
stages:
  - name: split
    input: {p}photos
    steps: [{{step: "pipeline_steps:split_step", parts: {PARTS}}}]
    output: {p}crops
  - name: grade-a
    input: {p}crops
    steps: [{{step: "pipeline_steps:grade_step", model: grade-a, delay_ms: 2}}]
    output: {p}grades.a
  - name: grade-b
    input: {p}crops
    steps: [{{step: "pipeline_steps:grade_step", model: grade-b, delay_ms: 2}}]
    output: {p}grades.b
  - name: join
    input: [{p}grades.a, {p}grades.b, {p}crops.dlq]
    join: {{by: parent_id, branches: [grade-a, grade-b], timeout_ms: 600000, mode: outer,
            idle_ms: 500}}
    output: {p}leaves
    replicas: 2
  - name: per-key
    input: {p}leaves
    window: {{kind: tumbling, size_ms: {WINDOW_US // 1000}, lateness_ms: 45000, keep: count,
              idle_ms: 500}}
    output: {p}counts
    replicas: 2
"""
    )
    return path


def _feed(bus: Bus, topic: str, inputs: list[Envelope]) -> None:
    for start in range(0, len(inputs), 50):
        produce_envelopes(bus, topic, inputs[start : start + 50])
        time.sleep(0.05)


def _distinct(messages: list[Message]) -> dict[str, Envelope]:
    """Outputs by id; copies of one id must carry the same result."""
    by_id: dict[str, Envelope] = {}
    for message in messages:
        env = parse(message.value)
        seen = by_id.setdefault(env.id, env)
        assert _result(seen) == _result(env), f"output {env.id} sent twice with different results"
    return by_id


def _result(env: Envelope) -> tuple[object, ...]:
    grades = sorted((p.model_name, p.label) for p in env.predictions)
    return tuple(sorted(env.attributes.items())), tuple(grades)


@pytest.mark.slow
@pytest.mark.long_variants("kafka")  # the embedded variant runs in CI
def test_sigkill_of_join_and_window_workers_matches_the_offline_reference(
    bus_url: str, bus: Bus, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    p = unique("ff") + "."
    pipeline = _pipeline(tmp_path, bus_url, p)
    up = start_up(pipeline, tmp_path)
    try:
        assert wait_until(lambda: len(worker_pids(pipeline)) == 7, 60), "workers did not start"
        stages = ("split", "grade-a", "grade-b", "join", "per-key")
        groups = [f"{p}faults.{stage}" for stage in stages]
        assert wait_until(lambda: all(bus.members(g) > 0 for g in groups), 90)
        now = time.time_ns() // 1000
        inputs = [
            new_envelope(
                b"img", "image/png", key=f"k{i % KEYS}", attributes={"n": str(i)},
                created_at_us=now + i * 10_000,
            )
            for i in range(PHOTOS)
        ]  # fmt: skip
        feeder = threading.Thread(target=_feed, args=(bus, f"{p}photos", inputs))
        feeder.start()
        rng = random.Random(7)
        kills = 0
        while kills < KILLS:
            time.sleep(rng.uniform(0.3, 0.9))
            pids = worker_pids(pipeline)
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
        feeder.join()
        reference = Counter(
            (e.partition_key, e.created_at_us // WINDOW_US * WINDOW_US) for e in inputs
        )
        leaves = _distinct(drain_topic(bus, f"{p}leaves", PHOTOS * PARTS, timeout_s=240))
        counts = _distinct(drain_topic(bus, f"{p}counts", len(reference), timeout_s=240))
        late = sum(part.high for part in bus.partitions(f"{p}leaves.late"))
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=90)
    assert kills == KILLS
    assert len(leaves) == PHOTOS * PARTS, f"{PHOTOS * PARTS - len(leaves)} leaves lost"
    for leaf in leaves.values():
        assert leaf.attributes["join.status"] == "complete", leaf.attributes
        grades = {pred.model_name: int(pred.label) for pred in leaf.predictions}
        assert grades == {g: expected_grade(leaf, g) for g in ("grade-a", "grade-b")}
    got: Counter[tuple[str, int]] = Counter()
    for window in counts.values():
        slot = (window.attributes["window.key"], int(window.attributes["window.start_us"]))
        assert slot not in got, f"window {slot} emitted under two ids"
        got[slot] = int(window.attributes["window.count"])
    assert got == Counter({slot: n * PARTS for slot, n in reference.items()})
    assert late == 0, f"{late} events were late"
    assert up.returncode == 0, "inferstream up did not drain cleanly after Ctrl-C"
