"""Bus benchmark: produce and consume+commit rates against raw SQLite in the same run.

Not a test: it prints a table. Each framework figure is shown next to a baseline
measured in the same run on the same machine: plain ``sqlite3`` ``executemany``
inserts and range selects of the same rows (same columns, same index, same WAL
settings), so the table says what the bus costs on top of the storage it uses.

    .venv/bin/python bench/bus_bench.py [--messages 50000] [--batch 500] [--size 1024]
    .venv/bin/python bench/bus_bench.py --kafka kafka://127.0.0.1:9092

One function per measurement, each returning a :class:`Result`; ``--kafka`` runs
``kafka_framework(url, spec)`` and ``kafka_raw(url, spec)`` when this module defines them,
and the per-operation Kafka measurements (``kafka_produce``, ``kafka_consume`` and their
raw confluent-kafka baselines).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inferstream.bus import Record, open_bus


@dataclass(frozen=True)
class Spec:
    """What every measurement moves: ``messages`` values of ``size`` bytes, ``batch`` at a time."""

    messages: int
    batch: int
    size: int
    folder: Path


@dataclass(frozen=True)
class Result:
    name: str
    messages: int
    seconds: float
    #: Name of the row this one is compared against, if any.
    baseline: str | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("inf")


def _payloads(spec: Spec) -> list[bytes]:
    # Distinct payloads per batch slot so nothing compresses or dedupes by accident.
    return [os.urandom(spec.size) for _ in range(spec.batch)]


def embedded_produce(spec: Spec) -> Result:
    bus = open_bus(f"sqlite:///{spec.folder / 'bus.db'}")
    bus.create_topic("bench", partitions=4)
    payloads = _payloads(spec)
    started = time.perf_counter()
    for start in range(0, spec.messages, spec.batch):
        count = min(spec.batch, spec.messages - start)
        bus.produce("bench", [Record(b"%d" % (start + i), payloads[i]) for i in range(count)])
    seconds = time.perf_counter() - started
    bus.close()
    return Result("embedded produce", spec.messages, seconds, "sqlite3 executemany insert")


def embedded_consume(spec: Spec) -> Result:
    """Poll and commit every message produced by :func:`embedded_produce`."""
    bus = open_bus(f"sqlite:///{spec.folder / 'bus.db'}")
    consumer = bus.consumer("bench-group", ["bench"])
    seen = 0
    started = time.perf_counter()
    while seen < spec.messages:
        batch = consumer.poll_batch(spec.batch, 1.0)
        if not batch:
            raise RuntimeError(f"consumer stopped after {seen} of {spec.messages} messages")
        consumer.commit(batch)
        seen += len(batch)
    seconds = time.perf_counter() - started
    consumer.close()
    bus.close()
    return Result("embedded consume+commit", seen, seconds, "sqlite3 range select")


_RAW_SCHEMA = """
CREATE TABLE messages (topic_id INTEGER NOT NULL, part INTEGER NOT NULL, seq INTEGER NOT NULL,
                       key BLOB, value BLOB NOT NULL, ts INTEGER NOT NULL);
CREATE UNIQUE INDEX messages_position ON messages (topic_id, part, seq);
"""


def _raw_connection(spec: Spec) -> sqlite3.Connection:
    conn = sqlite3.connect(spec.folder / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def raw_insert(spec: Spec) -> Result:
    """The same rows as the embedded produce, one transaction per batch, no bookkeeping."""
    conn = _raw_connection(spec)
    conn.executescript(_RAW_SCHEMA)
    payloads = _payloads(spec)
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for start in range(0, spec.messages, spec.batch):
        count = min(spec.batch, spec.messages - start)
        rows = [(1, 0, start + i, b"%d" % (start + i), payloads[i], now) for i in range(count)]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return Result("sqlite3 executemany insert", spec.messages, seconds)


def raw_select(spec: Spec) -> Result:
    """Read back the rows of :func:`raw_insert` a batch at a time, by offset range."""
    conn = _raw_connection(spec)
    seen = 0
    started = time.perf_counter()
    for start in range(0, spec.messages, spec.batch):
        seen += len(
            conn.execute(
                "SELECT seq, key, value, ts FROM messages "
                "WHERE topic_id = 1 AND part = 0 AND seq >= ? AND seq < ? ORDER BY seq",
                (start, start + spec.batch),
            ).fetchall()
        )
    seconds = time.perf_counter() - started
    conn.close()
    return Result("sqlite3 range select", seen, seconds)


# -- Kafka: KafkaBus against bare confluent-kafka on the same broker, same run --------
#
# Both sides use the same librdkafka settings (KafkaSettings: idempotent producer,
# acks=all, manual commits), produce keyed 1 KB values in batches flushed one at a time,
# and consume a pre-filled 4-partition topic committing synchronously after each batch.
# Each figure is the median of KAFKA_ROUNDS runs on fresh topics, since the broker and
# the machine are shared. Consume timing starts at the first message: group joins take
# seconds on tansu and are not what is measured.

KAFKA_ROUNDS = 3


def _kafka_topic(url: str, prefix: str, spec: Spec, fill: bool = False) -> str:
    import uuid

    from inferstream.bus.kafka import KafkaBus

    bus = KafkaBus(url)
    try:
        topic = f"bench-{prefix}-{uuid.uuid4().hex[:8]}"
        bus.create_topic(topic, partitions=4)
        payloads = _payloads(spec)
        for start in range(0, spec.messages if fill else 0, spec.batch):
            count = min(spec.batch, spec.messages - start)
            bus.produce(topic, [Record(b"%d" % (start + i), payloads[i]) for i in range(count)])
        return topic
    finally:
        bus.close()


def _median_run(
    name: str, baseline: str | None, once: Callable[[str, Spec], float], url: str, spec: Spec
) -> Result:
    seconds = sorted(once(url, spec) for _ in range(KAFKA_ROUNDS))[KAFKA_ROUNDS // 2]
    return Result(name, spec.messages, seconds, baseline)


def _kafka_produce_once(url: str, spec: Spec) -> float:
    from inferstream.bus.kafka import KafkaBus

    topic = _kafka_topic(url, "produce", spec)
    bus = KafkaBus(url)
    try:
        payloads = _payloads(spec)
        bus.produce(topic, [Record(b"warm-up", payloads[0])])  # connect, get a producer id
        started = time.perf_counter()
        for start in range(0, spec.messages, spec.batch):
            count = min(spec.batch, spec.messages - start)
            bus.produce(topic, [Record(b"%d" % (start + i), payloads[i]) for i in range(count)])
        return time.perf_counter() - started
    finally:
        bus.close()


def _raw_produce_once(url: str, spec: Spec) -> float:
    from confluent_kafka import Producer

    from inferstream.bus.kafka_settings import KafkaSettings

    topic = _kafka_topic(url, "rawproduce", spec)
    producer = Producer(KafkaSettings.from_url(url).producer_config())
    failures: list[object] = []

    def on_delivery(error: object, _message: object) -> None:
        if error is not None:
            failures.append(error)

    payloads = _payloads(spec)
    producer.produce(topic, payloads[0], b"warm-up", on_delivery=on_delivery)
    producer.flush()
    started = time.perf_counter()
    for start in range(0, spec.messages, spec.batch):
        count = min(spec.batch, spec.messages - start)
        for i in range(count):
            producer.produce(topic, payloads[i], b"%d" % (start + i), on_delivery=on_delivery)
        producer.flush()
        if failures:
            raise RuntimeError(f"raw producer failed: {failures[0]}")
    return time.perf_counter() - started


def _kafka_consume_once(url: str, spec: Spec) -> float:
    import uuid

    from inferstream.bus.kafka import KafkaBus

    topic = _kafka_topic(url, "consume", spec, fill=True)
    bus = KafkaBus(url)
    consumer = bus.consumer(f"bench-{uuid.uuid4().hex[:8]}", [topic])
    try:
        first = consumer.poll_batch(spec.batch, 60.0)
        consumer.commit(first)
        seen, started = len(first), time.perf_counter()
        while seen < spec.messages:
            batch = consumer.poll_batch(spec.batch, 5.0)
            if not batch:
                raise RuntimeError(f"consumer stopped after {seen} of {spec.messages} messages")
            consumer.commit(batch)
            seen += len(batch)
        # Scaled to the full count so the Result's rate covers every message.
        return (time.perf_counter() - started) * spec.messages / max(seen - len(first), 1)
    finally:
        consumer.close()
        bus.close()


def _raw_consume_once(url: str, spec: Spec) -> float:
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    from inferstream.bus.kafka_settings import KafkaSettings

    topic = _kafka_topic(url, "rawconsume", spec, fill=True)
    settings = KafkaSettings.from_url(url)
    consumer = Consumer(settings.consumer_config(f"bench-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])

    def consume_and_commit(wait_s: float) -> int:
        batch = [m for m in consumer.consume(spec.batch, wait_s) if m.error() is None]
        # Messages of a partition arrive in order: the last one per partition wins.
        last = {m.partition(): m.offset() for m in batch}
        if last:
            offsets = [
                TopicPartition(topic, p, o + 1)
                for p, o in last.items()
                if p is not None and o is not None
            ]
            consumer.commit(offsets=offsets, asynchronous=False)
        return len(batch)

    try:
        first, deadline = 0, time.monotonic() + 60
        while not first and time.monotonic() < deadline:
            first = consume_and_commit(1.0)
        seen, started = first, time.perf_counter()
        while seen < spec.messages:
            got = consume_and_commit(5.0)
            if not got:
                raise RuntimeError(f"raw consumer stopped after {seen} of {spec.messages}")
            seen += got
        return (time.perf_counter() - started) * spec.messages / max(seen - first, 1)
    finally:
        consumer.close()


def kafka_raw_produce(url: str, spec: Spec) -> Result:
    return _median_run("confluent Producer", None, _raw_produce_once, url, spec)


def kafka_produce(url: str, spec: Spec) -> Result:
    return _median_run("kafka produce", "confluent Producer", _kafka_produce_once, url, spec)


def kafka_raw_consume(url: str, spec: Spec) -> Result:
    return _median_run("confluent consume+commit", None, _raw_consume_once, url, spec)


def kafka_consume(url: str, spec: Spec) -> Result:
    baseline = "confluent consume+commit"
    return _median_run("kafka consume+commit", baseline, _kafka_consume_once, url, spec)


def print_table(results: list[Result], spec: Spec) -> None:
    by_name = {r.name: r for r in results}
    print(f"{spec.messages} messages of {spec.size} B in batches of {spec.batch}")
    print(
        f"{'measurement':<30} {'msgs':>8} {'seconds':>8} {'msgs/s':>10} {'MB/s':>7} {'vs base':>8}"
    )
    for r in results:
        base = by_name.get(r.baseline) if r.baseline else None
        ratio = f"{r.rate / base.rate:7.0%}" if base else ""
        mb = r.rate * spec.size / 1e6
        print(
            f"{r.name:<30} {r.messages:>8} {r.seconds:>8.2f} {r.rate:>10,.0f} {mb:>7.1f} {ratio:>8}"
        )


def kafka_measurements(url: str, spec: Spec) -> list[Result]:
    """Run the Kafka measurements this module defines, baselines first."""
    names = (
        "kafka_raw",
        "kafka_framework",
        "kafka_raw_produce",
        "kafka_produce",
        "kafka_raw_consume",
        "kafka_consume",
    )
    found: list[Callable[[str, Spec], Result]] = [
        globals()[n] for n in names if callable(globals().get(n))
    ]
    if not found:
        raise SystemExit("this version of bus_bench.py has no Kafka measurements yet")
    return [measure(url, spec) for measure in found]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--size", type=int, default=1024, help="payload bytes per message")
    parser.add_argument("--kafka", metavar="URL", help="also measure this kafka:// bus")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bus-bench-") as folder:
        spec = Spec(args.messages, args.batch, args.size, Path(folder))
        results = [
            raw_insert(spec),
            raw_select(spec),
            embedded_produce(spec),
            embedded_consume(spec),
        ]
        if args.kafka:
            results += kafka_measurements(args.kafka, spec)
    print_table(results, spec)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
