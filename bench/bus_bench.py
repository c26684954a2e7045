"""Bus benchmark: produce and consume+commit rates against raw SQLite in the same run.

Not a test: it prints a table. Each framework figure is shown next to a baseline
measured in the same run on the same machine: plain ``sqlite3`` ``executemany``
inserts and range selects of the same rows (same columns, same index, same WAL
settings), so the table says what the bus costs on top of the storage it uses.

    .venv/bin/python bench/bus_bench.py [--messages 50000] [--batch 500] [--size 1024]
    .venv/bin/python bench/bus_bench.py --kafka kafka://127.0.0.1:9092

One function per measurement, each returning a :class:`Result`; ``--kafka`` runs
``kafka_framework(url, spec)`` and ``kafka_raw(url, spec)`` when this module defines them.
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
    """Run ``kafka_framework`` and ``kafka_raw`` if this module defines them."""
    names = ("kafka_raw", "kafka_framework")
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
