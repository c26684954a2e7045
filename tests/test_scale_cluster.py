"""Scale test on one machine: the flagship's own pipeline file on Kafka (a tansu broker
of the test's own), PostgreSQL and S3 by URL, run by ``inferstream worker`` processes, as
a cluster runs it. While scans arrive at a steady rate, its heaviest stage (classify)
goes from one worker process to three and back to one (one leaving on SIGTERM, one
killed), the store stage from one to two and back; then every scan is counted by id.

The proof that scaling happened is in the records: each carries the classify worker
that made it (its lineage), so the scaled-up workers must each have classified scans,
and the scans sent after the scale-down only the one left. The second store worker
shows what it consumed on its metrics page.

The broker holds every group join for ``max.poll.interval.ms`` (10 s), so each change
of membership pauses a stage for about that long: the test waits on what the workers
did (records, metrics), never on a clock.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from blob_worlds import S3World, s3_world
from broker_testing import S3Server, free_port, stop, tansu
from egg_scans import egg_envelopes, wait_for_records
from flow_testing import produce_envelopes, wait_for
from pg_testing import private_schema
from sqlalchemy import select

from inferstream.apps.eggs import APP, LABELS
from inferstream.bus import Bus, open_bus
from inferstream.envelope import Envelope, new_envelope
from inferstream.pipeline import load_pipeline
from inferstream.runner import ensure_topics
from inferstream.store import ResultsStore
from inferstream.store.schema import records

#: Scans/s: a few thousand over the test. Below what one classify worker reads from the
#: bucket on a busy 2-core machine (57/s, docs/benchmarks.md "Scaling on Kafka"), so the
#: backlog left by each rebalance drains while the feed goes on (at 80/s the test took
#: twice as long).
RATE = 40
DISTINCT = 60  # scans rendered and put in the bucket; each sent again under new ids
STAGE_TIMEOUT_S = 90.0  # a step of the test: a worker's start and one rebalance, or more


@dataclass
class Feeder:
    """Sends claim-checked scans to ``scans.raw`` at ``RATE`` from a thread until stopped;
    keeps every id it sent, in order."""

    bus: Bus
    tenant: str
    checked: list[Envelope]  # scans whose bytes are in the bucket: only their refs travel
    sent: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="feeder")
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def _run(self) -> None:
        tick, started = 0.1, time.monotonic()
        while not self.stopping.is_set():
            due = int((time.monotonic() - started) * RATE)
            with self.lock:  # what mark() counts was on the bus before it returned
                scans = [self._scan(n) for n in range(len(self.sent), due)]
                if scans:
                    produce_envelopes(self.bus, "scans.raw", scans)
                    self.sent += [scan.id for scan in scans]
            self.stopping.wait(tick)

    def mark(self) -> int:
        """How many scans were sent so far; those sent later are produced after this."""
        with self.lock:
            return len(self.sent)

    def _scan(self, number: int) -> Envelope:
        """Scan ``number``: a new envelope (id, key) carrying one of the bucket's scans."""
        original = self.checked[number % len(self.checked)]
        scan = new_envelope(b"", "application/dicom", tenant=self.tenant, key=f"egg-{number}")
        scan.payload.blob.CopyFrom(original.payload.blob)
        return scan


class Workers:
    """``inferstream worker`` processes of the flagship's file, one per stage replica,
    each logging to a file of its own; the URLs come from the environment."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: dict[str, int] = {}

    def start(self, stage: str, replica: int, *, metrics: bool = False) -> str:
        name = f"{stage}-{replica}"
        argv = [sys.executable, "-m", "inferstream", "worker", str(APP.pipeline_path()),
                "--stage", stage, "--replica", str(replica)]  # fmt: skip
        if metrics:
            self.metrics_ports[name] = free_port()
            argv += ["--metrics-port", str(self.metrics_ports[name])]
        with (self.folder / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        return name

    def end(self, name: str, sig: signal.Signals) -> int:
        """Send ``sig`` to worker ``name``; its exit code once it is gone."""
        proc = self.procs[name]
        proc.send_signal(sig)
        return proc.wait(timeout=60)

    def consumed(self, name: str) -> float:
        """Messages worker ``name`` consumed so far, from its own metrics page (0 until
        it serves one)."""
        url = f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                page = answer.read().decode()
        except OSError:
            return 0.0
        for line in page.splitlines():
            if line.startswith("inferstream_messages_in_total{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                stop(proc)


@dataclass(frozen=True)
class Stored:
    """What the store holds for the tenant: per record its root (the scan), the classify
    worker that made it (``classify-<replica>``) and its label and model."""

    roots: list[str]
    classified_by: dict[str, str]
    labels: set[str]
    models: set[str]


def read_stored(store: ResultsStore, tenant: str) -> Stored:
    query = select(records.c.root_id, records.c.lineage, records.c.label,
                   records.c.model_name).where(records.c.tenant == tenant)  # fmt: skip
    with store.tenant_transaction(tenant, "read the records of") as conn:
        rows: list[Any] = list(conn.execute(query))
    by = {r.root_id: step["worker"].split("@")[0] for r in rows for step in r.lineage
          if step["stage"] == "classify"}  # fmt: skip
    return Stored([r.root_id for r in rows], by, {r.label for r in rows},
                  {r.model_name for r in rows})  # fmt: skip


def classify_workers(store: ResultsStore, tenant: str) -> set[str]:
    return set(read_stored(store, tenant).classified_by.values())


@pytest.fixture
def cluster(
    tmp_path: Path, s3: S3Server, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3World]:
    """A broker of the test's own (the session's may hold other tests' flagship topics and
    groups), a fresh PostgreSQL schema and a bucket, named to the flagship's file through
    the variables it reads, as a cluster's manifests name them."""
    port = free_port()
    broker = tansu(port, tmp_path / "tansu.log")
    try:
        with private_schema(postgres_url, "scale") as store_url:
            world = s3_world(monkeypatch, s3, "eggs")
            monkeypatch.setenv("INFERSTREAM_BUS", f"kafka://127.0.0.1:{port}")
            monkeypatch.setenv("INFERSTREAM_STORE", store_url)
            monkeypatch.setenv("INFERSTREAM_BLOBS", world.store.url)
            try:
                yield world
            finally:
                world.close()
    finally:
        stop(broker)


def claim_checked(world: S3World, tenant: str) -> list[Envelope]:
    scans = egg_envelopes(DISTINCT, seed=19, tenant=tenant)
    for scan in scans:
        scan.payload.blob.CopyFrom(world.store.put(scan.payload.inline, tenant))
    return scans


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.kafka
@pytest.mark.postgres
def test_workers_scaled_up_and_down_while_scans_arrive_store_each_once(
    cluster: S3World, tmp_path: Path
) -> None:
    spec = load_pipeline(APP.pipeline_path())  # the shipped file, URLs from the environment
    assert spec.bus.startswith("kafka://") and spec.store.startswith("postgresql")
    assert spec.partitions("scans.raw") == spec.partitions("scans.predicted") == 4
    tenant = f"farm-{uuid.uuid4().hex[:8]}"
    bus, store = open_bus(spec.bus), ResultsStore(spec.store)
    ensure_topics(bus, spec)
    feeder = Feeder(bus, tenant, claim_checked(cluster, tenant))
    workers = Workers(tmp_path)
    try:
        workers.start("classify", 0)
        workers.start("store", 0)
        feeder.start()
        assert wait_for(lambda: store.count_results(tenant) > 0, STAGE_TIMEOUT_S)

        # Up: classify 1 -> 3, store 1 -> 2, until each new worker has done some work.
        workers.start("classify", 1)
        workers.start("classify", 2)
        workers.start("store", 1, metrics=True)
        assert wait_for(
            lambda: classify_workers(store, tenant) == {"classify-0", "classify-1", "classify-2"},
            STAGE_TIMEOUT_S,
        ), f"classified by {classify_workers(store, tenant)} only"
        assert wait_for(lambda: workers.consumed("store-1") > 0, STAGE_TIMEOUT_S)

        # Down: classify 3 -> 1 (one drains on SIGTERM, one is killed mid-work), store 2 -> 1.
        assert workers.end("classify-2", signal.SIGTERM) == 0, workers.log("classify-2")
        assert workers.end("store-1", signal.SIGTERM) == 0, workers.log("store-1")
        assert "drained and stopped" in workers.log("classify-2")
        workers.end("classify-1", signal.SIGKILL)
        down_at = feeder.mark()
        # Some of what was sent since is stored: the one classify worker left took every
        # partition. Then the feed stops and the rest drains.
        assert wait_for(lambda: store.count_results(tenant) >= down_at + 2 * RATE, STAGE_TIMEOUT_S)
        feeder.stop()
        assert wait_for_records(store, tenant, len(feeder.sent)) == len(feeder.sent)
        time.sleep(1.0)  # a redelivery that doubled a scan would land now
        stored = read_stored(store, tenant)
        dead_letters = sum(p.high for t in ("scans.raw.dlq", "scans.predicted.dlq")
                           for p in bus.partitions(t))  # fmt: skip
    finally:
        feeder.stop()
        workers.close()
        bus.close()
        store.close()

    # The feed outlasted two rebalances (the broker holds each join for 10 s).
    assert len(feeder.sent) >= 20 * RATE, "the feed ran for less time than the test assumes"
    assert sorted(stored.roots) == sorted(feeder.sent)  # every scan once: 0 lost, 0 doubled
    assert dead_letters == 0
    # Every scan was classified (its bytes read from the bucket: none travelled inline).
    assert stored.labels <= set(LABELS) and stored.models == {"egg_sexing"}
    assert set(stored.classified_by.values()) == {"classify-0", "classify-1", "classify-2"}
    after_down = {stored.classified_by[i] for i in feeder.sent[down_at:]}
    assert after_down == {"classify-0"}
    assert any(k.startswith("models_registry/models/egg_sexing/") for k in cluster.stored_keys())
