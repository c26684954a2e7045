"""Fault tests: the disk under the results store, then under the bus, fills up while the
flagship pipeline runs, and space returns later; nobody intervenes.

Each runs on a 4 MB file system of its own (tmpfs, the ``small_disk`` fixture), filled
to the last block by a file the test removes to give the space back. Meanwhile writes
fail with "database or disk is full", which the store and the bus report as the
transient errors they are: workers retry their batches and commit nothing, a producer
is told to try again. Afterwards every scan is one record, counted by id: 0 lost,
0 doubled, none dead-lettered for the full disk."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from egg_scans import egg_envelopes, flagship, wait_for_records
from flow_testing import produce_envelopes

from inferstream.bus import Record, open_bus
from inferstream.errors import BusFullError
from inferstream.store import ResultsStore
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow

TENANT = "farm"
FULL_S = 5.0


def fill(folder: Path) -> Path:
    """A file taking every free block of ``folder``'s file system."""
    filler = folder / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def check_once_each(store: ResultsStore, sent: int) -> None:
    records = store.list_results(TENANT, limit=500).items
    roots = [r.root_id for r in records]
    assert len(roots) == len(set(roots)) == sent  # 0 lost, 0 doubled
    assert store.list_dead_letters(TENANT, limit=10).items == []


def test_the_store_disk_fills_and_space_returns(tmp_path: Path, small_disk: Path) -> None:
    spec = flagship(tmp_path, store=f"sqlite:///{small_disk / 'results.db'}")
    bus, store = open_bus(spec.bus), ResultsStore(spec.store)
    try:
        with pipeline_threads(spec, replicas=1):
            produce_envelopes(bus, "scans.raw", egg_envelopes(20, seed=1, tenant=TENANT))
            assert wait_for_records(store, TENANT, 20) == 20
            filler = fill(small_disk)
            produce_envelopes(bus, "scans.raw", egg_envelopes(60, seed=2, tenant=TENANT))
            time.sleep(FULL_S)
            stalled = store.count_results(TENANT)
            filler.unlink()  # space returns
            assert wait_for_records(store, TENANT, 80) == 80
        check_once_each(store, 80)
    finally:
        bus.close()
        store.close()
    assert stalled < 80  # the disk was full: not everything could be written meanwhile


def test_the_bus_disk_fills_and_space_returns(tmp_path: Path, small_disk: Path) -> None:
    spec = flagship(tmp_path, bus=f"sqlite:///{small_disk / 'bus.db'}")
    bus, store = open_bus(spec.bus), ResultsStore(spec.store)
    try:
        with pipeline_threads(spec, replicas=1):
            # Ten scans first, then twice as many in one write: more than the log's file
            # holds in the blocks it keeps across restarts (the same number of scans
            # once fitted there in a CI run), so the file must grow, on a full disk.
            produce_envelopes(bus, "scans.raw", egg_envelopes(10, seed=3, tenant=TENANT))
            assert wait_for_records(store, TENANT, 10) == 10
            filler = fill(small_disk)
            late = egg_envelopes(20, seed=4, tenant=TENANT)
            with pytest.raises(BusFullError, match="disk is full"):
                produce_envelopes(bus, "scans.raw", late)  # the producer is told so
            time.sleep(FULL_S)
            filler.unlink()  # space returns
            produce_envelopes(bus, "scans.raw", late)
            assert wait_for_records(store, TENANT, 30) == 30
        check_once_each(store, 30)
    finally:
        bus.close()
        store.close()


def test_the_bus_log_stays_small_on_a_small_disk(small_disk: Path) -> None:
    """The write-ahead log is kept between restarts (up to 1 GB) and holds pages the
    file already has: 600 offset commits rewrite the same few pages, 40 MB of log in
    5 s on a 4 MB disk whose data stays tiny. The log starts over (SQLite's own reset
    once the checkpointer has copied it all and no reader is in it, or the
    checkpointer's restart at a quarter of the free space), so nothing is refused and
    nothing is lost."""
    bus = open_bus(f"sqlite:///{small_disk / 'bus.db'}")
    bus.create_topic("t", 1)
    consumer = bus.consumer("g", ["t"])
    got = []
    try:
        for i in range(600):
            bus.produce("t", [Record(b"k", str(i).encode())])
            batch = consumer.poll_batch(10, 1.0)
            consumer.commit(batch)
            got += [int(m.value) for m in batch]
            time.sleep(0.008)
    finally:
        consumer.close()
        bus.close()
    assert got == list(range(600))
