"""Fault tests: kill -9 workers of a running two-stage pipeline, count records by input.

Runs on both bus backends. ``inferstream up`` supervises the workers and restarts
each killed one; the results store (SQLite) is the sink. Every input must have
exactly one record (found by its root id): none lost, none doubled.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from processes import start_up, wait_until, with_short_sessions, worker_pids

from inferstream.bus import Record, open_bus
from inferstream.envelope import new_envelope

KILLS = 12
MESSAGES = 3000


def _pipeline_file(tmp_path: Path, bus_url: str, topic: str) -> Path:
    bus_url = with_short_sessions(bus_url)
    path = tmp_path / "faults.yaml"
    path.write_text(
        f"""
name: faults-{topic}
bus: {bus_url}
store: sqlite:///{tmp_path / "results.db"}
blobs: file://{tmp_path / "blobs"}
topics:
  {topic}: {{partitions: 4}}
stages:
  - name: label
    input: {topic}
    output: {topic}.labelled
    steps: [{{step: "pipeline_steps:label_step", delay_ms: 5}}]
    batch: {{max_size: 32, max_wait_ms: 5}}
    replicas: 2
  - name: store
    input: {topic}.labelled
    steps: [store_results]
    batch: {{max_size: 128, max_wait_ms: 5}}
    replicas: 2
"""
    )
    return path


def _count_results(db: Path) -> tuple[int, int]:
    """(rows, distinct inputs they were made from) in the records table."""
    if not db.exists():
        return 0, 0
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            counts = sa.text("SELECT count(*), count(DISTINCT root_id) FROM records")
            rows = conn.execute(counts).one()
    except sa.exc.OperationalError:
        return 0, 0
    finally:
        engine.dispose()
    return int(rows[0]), int(rows[1])


@pytest.mark.slow
def test_sigkill_of_workers_loses_and_doubles_nothing(
    bus_url: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    topic = unique("jobs")
    pipeline = _pipeline_file(tmp_path, bus_url, topic)
    up = start_up(pipeline, tmp_path)
    bus = open_bus(bus_url)
    try:
        bus.create_topic(topic, 4)
        inputs = [
            new_envelope(b"payload", "text/plain", key=f"k{i}", attributes={"n": str(i)})
            for i in range(MESSAGES)
        ]

        def feed() -> None:
            for start in range(0, MESSAGES, 100):
                chunk = inputs[start : start + 100]
                bus.produce(
                    topic, [Record(e.partition_key.encode(), e.SerializeToString()) for e in chunk]
                )
                time.sleep(0.1)

        feeder = threading.Thread(target=feed)
        feeder.start()
        assert wait_until(lambda: len(worker_pids(pipeline)) == 4, 60), "workers did not start"
        rng = random.Random(1)
        kills = 0
        while kills < KILLS:
            time.sleep(rng.uniform(0.3, 0.9))
            pids = worker_pids(pipeline)
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
        feeder.join()
        db = tmp_path / "results.db"
        wait_until(lambda: _count_results(db)[1] >= MESSAGES, 180)
        rows, distinct = _count_results(db)
        engine = sa.create_engine(f"sqlite:///{db}")
        with engine.connect() as conn:
            stored = {r[0] for r in conn.execute(sa.text("SELECT root_id FROM records"))}
            labels = dict(conn.execute(sa.text("SELECT root_id, label FROM records")).all())
        engine.dispose()
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
        bus.close()
    expected = {e.id for e in inputs}
    assert kills == KILLS
    assert expected - stored == set(), f"{len(expected - stored)} inputs lost"
    assert rows == distinct == MESSAGES, f"{rows - distinct} results doubled"
    assert all(labels[e.id] == ("even" if i % 2 == 0 else "odd") for i, e in enumerate(inputs))
    assert up.returncode == 0, "inferstream up did not drain cleanly after Ctrl-C"
