"""Rolling upgrade of the flagship: the previous release's workers and this one's run
side by side in the same consumer groups, on one bus and one PostgreSQL store, fed by
producers of both releases, as during a real upgrade:

1. the previous release runs alone (its classify and store stages, its producers);
2. this release migrates the store (``inferstream migrate``) and starts its workers of
   the same stages beside the old ones: scans from both releases' producers are
   classified by both releases' workers, until each has done some;
3. the old workers stop (the roll is done) while old producers still send.

Every scan is stored exactly once (counted by id), and the previous release's store
code reads every record as this release's does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_testing import free_port, stop, tansu
from pg_testing import private_schema
from previous_release import (
    assert_same_reads,
    extract_previous_release,
    probe,
    release_env,
    worker,
)
from processes import wait_until
from upgrade_probe import egg_scans, produce, read_store

from inferstream.apps.eggs import APP
from inferstream.bus import open_bus
from inferstream.errors import StoreError
from inferstream.pipeline import load_pipeline
from inferstream.runner import ensure_topics
from inferstream.store import ResultsStore
from inferstream.store.migrate import head_revision

TENANT = "farm"
STAGES = ("classify", "store")
#: Scans each producer sends per round.
ROUND = 15
#: How long both releases' producers send rounds at most, waiting for the new workers
#: to take partitions (typically 2 or 3 rounds).
MIXED_FOR_AT_MOST_S = 180
# Short sessions: tansu holds a group join for max.poll.interval.ms, and workers of
# two releases join and leave the groups here.
KAFKA_OPTIONS = "session.timeout.ms=4000&heartbeat.interval.ms=500&max.poll.interval.ms=4000"


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_previous_release(tmp_path_factory.mktemp("previous-release"))


@pytest.fixture(params=["embedded", "kafka"])
def urls(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> Iterator[dict[str, str]]:
    """The flagship's three URLs as its file reads them: a bus of this test's own
    (the embedded log, or a Kafka-protocol broker), a PostgreSQL schema, a folder."""
    with private_schema(postgres_url, "upgrade") as store:
        urls = {"INFERSTREAM_STORE": store, "INFERSTREAM_BLOBS": f"file://{tmp_path / 'blobs'}"}
        if request.param == "embedded":
            yield {**urls, "INFERSTREAM_BUS": f"sqlite:///{tmp_path / 'bus.db'}"}
            return
        port = free_port()
        broker = tansu(port, tmp_path / "tansu.log")
        try:
            yield {**urls, "INFERSTREAM_BUS": f"kafka://127.0.0.1:{port}?{KAFKA_OPTIONS}"}
        finally:
            stop(broker)


class Deployment:
    """The flagship's workers of both releases on the same URLs, and its producers."""

    def __init__(self, previous: Path, urls: dict[str, str]) -> None:
        self.previous = previous
        self.urls = urls
        self.bus_url = urls["INFERSTREAM_BUS"]
        self.store_url = urls["INFERSTREAM_STORE"]
        # Each release runs the pipeline file it ships.
        self.old_pipeline = previous / "inferstream" / "apps" / "eggs" / "eggs.yaml"
        self.new_pipeline = APP.pipeline_path()
        self.workers: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.sent: list[str] = []

    def start(self, release: str) -> None:
        src, pipeline = (
            (self.previous, self.old_pipeline) if release == "old" else (None, self.new_pipeline)
        )
        for stage in STAGES:
            self.workers[(release, stage)] = worker(src, pipeline, stage, self.urls)

    def stop(self, release: str) -> list[int | None]:
        """SIGTERM to the release's workers: each drains its batch and leaves its groups."""
        stopping = [p for (r, _), p in self.workers.items() if r == release]
        for process in stopping:
            process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=60) for process in stopping]

    def pid(self, release: str) -> int:
        return self.workers[(release, "classify")].pid

    def send(self, release: str, seed: int) -> list[str]:
        """``ROUND`` scans from a producer of ``release``; their ids."""
        if release == "old":
            ids: list[str] = probe(
                self.previous, "produce-scans", self.bus_url, "scans.raw", str(ROUND), str(seed),
                TENANT,
            )  # fmt: skip
        else:
            scans = egg_scans(ROUND, seed, TENANT)
            produce(self.bus_url, "scans.raw", scans)
            ids = [scan.id for scan in scans]
        self.sent += ids
        return ids

    def stored(self) -> dict[str, list[str]]:
        """Each stored record's root (the scan) -> the workers of its classify stage."""
        rows, cursor = [], None
        try:
            with ResultsStore(self.store_url, migrate=False) as store:
                while True:
                    page = store.list_results(TENANT, cursor=cursor, limit=1000)
                    rows += page.items
                    if (cursor := page.next_cursor) is None:
                        break
        except StoreError:  # no tables before the first worker has migrated the store
            return {}
        return {
            row.root_id: [s["worker"] for s in row.lineage if s["stage"] == "classify"]
            for row in rows
        }

    def wait_stored(self, ids: list[str]) -> dict[str, list[str]]:
        wait_until(lambda: set(ids) <= self.stored().keys(), 120)
        stored = self.stored()
        assert set(ids) <= stored.keys(), f"{len(set(ids) - stored.keys())} scans not stored"
        return stored

    def close(self) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _classified_by(stored: dict[str, list[str]], ids: list[str]) -> set[int]:
    """The pids of the classify workers that made the records of ``ids``."""
    return {int(worker_id.rsplit(":", 1)[1]) for i in ids for worker_id in stored[i]}


def _until_both_releases_classify(deployment: Deployment) -> tuple[list[str], dict[str, list[str]]]:
    """Rounds of scans from both releases' producers until both releases' classify
    workers have made records of them (a new worker takes its partitions once it has
    started and joined), or time is up; the scans sent and what is stored."""
    mixed: list[str] = []
    deadline = time.monotonic() + MIXED_FOR_AT_MOST_S
    while True:
        mixed += deployment.send("old", seed=10 + len(mixed))
        mixed += deployment.send("new", seed=10 + len(mixed))
        stored = deployment.wait_stored(mixed)
        if len(_classified_by(stored, mixed)) == 2 or time.monotonic() > deadline:
            return mixed, stored


def _migrate_with_this_release(urls: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "inferstream", "migrate", str(APP.pipeline_path())],
        env={**release_env(None), **urls}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.long_variants("embedded")  # the Kafka variant runs in CI
def test_workers_of_both_releases_share_the_stages(previous: Path, urls: dict[str, str]) -> None:
    deployment = Deployment(previous, urls)
    bus = open_bus(deployment.bus_url)
    try:
        ensure_topics(bus, load_pipeline(APP.pipeline_path()).with_urls(bus=deployment.bus_url))
    finally:
        bus.close()
    try:
        # 1. The previous release alone.
        deployment.start("old")
        alone = deployment.send("old", seed=1)
        stored = deployment.wait_stored(alone)
        assert _classified_by(stored, alone) == {deployment.pid("old")}

        # 2. This release migrates the store, then its workers join the same groups.
        assert head_revision() in _migrate_with_this_release(urls)
        deployment.start("new")
        mixed, stored = _until_both_releases_classify(deployment)
        assert _classified_by(stored, mixed) == {deployment.pid("old"), deployment.pid("new")}

        # 3. The old workers leave; producers of both releases still send.
        assert deployment.stop("old") == [0, 0]
        after = deployment.send("old", seed=1000) + deployment.send("new", seed=1001)
        stored = deployment.wait_stored(after)
        assert _classified_by(stored, after) == {deployment.pid("new")}
    finally:
        deployment.close()

    # Every scan stored once, by id: one record per scan sent, none of another.
    assert len(deployment.sent) == len(set(deployment.sent))
    with ResultsStore(deployment.store_url, migrate=False) as store:
        assert store.count_results(TENANT) == len(deployment.sent)
    assert sorted(stored) == sorted(deployment.sent)
    assert all(len(workers) == 1 for workers in stored.values())
    # Old reader, new writer and the reverse: both releases read every record alike.
    old_view = probe(previous, "read-store", deployment.store_url, TENANT)
    assert_same_reads(old_view, read_store(deployment.store_url, TENANT))
