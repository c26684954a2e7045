"""Latency on Kafka + PostgreSQL against the embedded path, with the raw client beside it.

The goal line of issue 21: at half of the Kafka + PostgreSQL path's own ceiling, its
p99 at most 2x the embedded path's p99 at the same load, measured in one run, with
the raw client's produce -> consume round trip on the same broker as the baseline. One
command, one run::

    .venv/bin/python bench/kafka_latency.py [--scans 6000] [--fed-s 10]

1. **Kafka + PostgreSQL**: the flagship's pipeline file by URL (``bench/scale_bench.py``'s
   setup: a tansu broker started here, a fresh schema of the local PostgreSQL, a bucket
   of a moto S3 server), one ``inferstream worker`` for classify and one for store; the
   drain of ``--scans`` scans gives the ceiling, then scans are fed at half of it for
   ``--fed-s`` seconds: latency created -> stored, p50 and p99;
2. **raw client**, a fresh broker of the same binary: confluent-kafka produces
   messages of a scan's size at the same rate and one consumer reads them; produce ->
   consume p50/p99 with the bus URL's ``fetch.wait.max.ms`` (10) and with librdkafka's
   default (500), since the test broker holds an empty fetch that long;
3. **embedded**: the same two workers on the embedded bus and a SQLite store, fed at the
   same rate: p50 and p99.

Every phase counts its scans stored by id and stops on any shortfall.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from confluent_kafka import Consumer, Producer
from scale_bench import (
    FED_S,
    FETCH_WAIT,
    Bench,
    Workers,
    free_port,
    server,
    store_and_blobs,
    tansu_argv,
)

from inferstream.bus import open_bus
from inferstream.envelope import now_us
from inferstream.runner import ensure_topics

#: Per stage, from the workers' /metrics: (metric, what the mean of it says).
MEANS = (
    ("inferstream_message_age_seconds", "age when finished ms"),
    ("inferstream_batch_processing_seconds", "batch processing ms"),
    ("inferstream_batch_size", "batch size"),
)


def scrape(workers: Workers) -> dict[tuple[str, str], tuple[float, float]]:
    """(stage, metric) -> (sum, count) over every worker's /metrics."""
    found: dict[tuple[str, str], tuple[float, float]] = {}
    for _, port in workers.procs:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            page = answer.read().decode()
        for line in page.splitlines():
            for metric, _ in MEANS:
                for part, slot in (("_sum{", 0), ("_count{", 1)):
                    if not line.startswith(metric + part):
                        continue
                    stage = line.split('stage="', 1)[1].split('"', 1)[0]
                    pair = list(found.get((stage, metric), (0.0, 0.0)))
                    pair[slot] += float(line.rsplit(" ", 1)[1])
                    found[(stage, metric)] = (pair[0], pair[1])
    return found


class TimedBench(Bench):
    """:class:`Bench` whose fed phase also reports each stage's means over the phase."""

    def warm_up(self, workers: Workers, count: int) -> float:
        self.workers = workers
        return super().warm_up(workers, count)

    def fed(self, count: int) -> dict[str, float]:
        before = scrape(self.workers)
        print(f"  fed at {self.fed_rate:.0f} scans/s for {FED_S:.0f} s...", flush=True)
        row = super().fed(count)
        after = scrape(self.workers)
        for (stage, metric), (total, n) in sorted(after.items()):
            total0, n0 = before.get((stage, metric), (0.0, 0.0))
            if n > n0:
                scale = 1.0 if metric == "inferstream_batch_size" else 1000.0
                label = dict(MEANS)[metric]
                row[f"{stage} {label}"] = (total - total0) / (n - n0) * scale
        return row


def breakdown(row: dict[str, float]) -> str:
    return "; ".join(f"{name} {value:.1f}" for name, value in row.items() if " " in name)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def raw_round_trip(port: int, rate: float, seconds: float, size: int, fetch_wait_ms: int) -> str:
    """Produce ``rate`` messages/s of ``size`` bytes for ``seconds``; p50/p99 ms from
    produce to a consumer's poll returning it."""
    topic = f"raw-{fetch_wait_ms}-{now_us()}"
    servers = f"127.0.0.1:{port}"
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 0})
    consumer = Consumer({"bootstrap.servers": servers, "group.id": topic,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.wait.max.ms": fetch_wait_ms, "max.poll.interval.ms": 10_000,
                         "session.timeout.ms": 10_000})  # fmt: skip
    producer.produce(topic, b"create")
    producer.flush(10)
    consumer.subscribe([topic])
    count = int(rate * seconds)
    latencies: list[float] = []
    ready = threading.Event()

    def consume() -> None:
        while len(latencies) < count:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            value = message.value() or b""
            if value == b"create":
                ready.set()
                continue
            latencies.append((now_us() - int(value[:16])) / 1000)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    if not ready.wait(60):  # the test broker holds a group join ~10 s
        raise SystemExit("the raw consumer did not join its group within 60 s")
    padding = b"x" * max(0, size - 16)
    started = time.monotonic()
    for number in range(count):
        delay = started + number / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.produce(topic, b"%016d" % now_us() + padding)
        producer.poll(0)
    producer.flush(30)
    reader.join(60)
    consumer.close()
    if len(latencies) < count:
        raise SystemExit(f"raw client: {len(latencies)} of {count} messages consumed")
    return f"p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms"


def embedded(args: argparse.Namespace, folder: Path, rate: float) -> dict[str, float]:
    """The same two workers on the embedded bus and a SQLite store, fed at ``rate``."""
    work = folder / "embedded"
    work.mkdir()
    os.environ["INFERSTREAM_BUS"] = f"sqlite:///{work / 'bus.db'}"
    os.environ["INFERSTREAM_STORE"] = f"sqlite:///{work / 'results.db'}"
    os.environ["INFERSTREAM_BLOBS"] = f"file://{work / 'blobs'}"
    bench = TimedBench(args, None, folder)  # no S3 server here
    bench.bus = open_bus(os.environ["INFERSTREAM_BUS"])
    bench.fed_rate = rate
    for phase in ("warm", "fed"):
        bench.scans.prepare(f"{phase}-0")
    try:
        ensure_topics(bench.bus, bench.spec)
        workers = Workers(1, work)
        try:
            bench.warm_up(workers, 0)
            time.sleep(2.0)
            row = bench.fed(0)
            bench.check(workers)
        finally:
            workers.stop()
    finally:
        bench.bus.close()
        bench.store.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=6000, help="scans in the drain (6000)")
    parser.add_argument("--fed-s", type=float, default=FED_S, help="seconds of the fed phases")
    parser.add_argument("--bus-options", default=FETCH_WAIT,
                        help=f"query options of the kafka:// URL ({FETCH_WAIT})")  # fmt: skip
    parser.add_argument("--folder", type=Path, help="where logs go (a new temporary folder)")
    args = parser.parse_args()
    args.claim_check = False
    args.bus_options = f"?{args.bus_options}" if args.bus_options else ""
    folder = args.folder or Path(tempfile.mkdtemp(prefix="kafka-latency-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()}; {os.cpu_count()} cores; logs in {folder}", flush=True)
    with ExitStack() as stack:
        kafka = TimedBench(args, store_and_blobs(stack, folder), folder)
        print("Kafka + PostgreSQL: 1 worker per stage, drain then fed at half of it...", flush=True)
        row = kafka.run(1)
        kafka.store.close()
        rate = kafka.fed_rate
        size = len(kafka.scans.records("size", 1)[0].value)
        print(f"raw client on a broker of its own, {rate:.0f} messages/s of {size} bytes...")
        broker_port = free_port()
        with server(tansu_argv(broker_port), broker_port, folder / "tansu-raw.log"):
            raw = {wait: raw_round_trip(broker_port, rate, args.fed_s, size, wait)
                   for wait in (10, 500)}  # fmt: skip
    print("embedded bus and SQLite store, same rate...", flush=True)
    local = embedded(args, folder, rate)
    ratio = row["p99_ms"] / local["p99_ms"]
    print(f"\nfed at {rate:.0f} scans/s for {args.fed_s:.0f} s (half of the Kafka path's drain, "
          f"{row['drain_per_s']:.0f} scans/s)")  # fmt: skip
    print(f"  Kafka + PostgreSQL   p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms")
    print(f"  embedded             p50 {local['p50_ms']:.1f} ms, p99 {local['p99_ms']:.1f} ms")
    print(f"  means over the fed phase, Kafka + PostgreSQL: {breakdown(row)}")
    print(f"  means over the fed phase, embedded: {breakdown(local)}")
    for wait, figures in raw.items():
        print(f"  raw client, fetch.wait.max.ms={wait:<4d} {figures}")
    print(f"Kafka p99 / embedded p99: {ratio:.2f} (goal <= 2)")


if __name__ == "__main__":
    main()
