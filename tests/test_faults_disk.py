"""Fault tests: the disk under the results store, then under the bus, fills up while the
flagship pipeline runs, and space returns later; nobody intervenes.

Each runs on a 4 MB file system of its own (tmpfs, the ``small_disk`` fixture), filled
to the last block by a file the test removes to give the space back. Meanwhile writes
fail with "database or disk is full", which the store and the bus report as the
transient errors they are: workers retry their batches and commit nothing, a producer
is told to try again. Afterwards every scan is one record, counted by id: 0 lost,
0 doubled, none dead-lettered for the full disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.dicomgen import to_dicom_bytes
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.bus import Bus, Record, open_bus
from inferstream.envelope import new_envelope
from inferstream.errors import TransientError
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultsStore
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow

TENANT = "farm"
FULL_S = 5.0


def scans(n: int, seed: int) -> list[Record]:
    specs = make_specs(n, seed=seed)
    envelopes = [
        new_envelope(to_dicom_bytes(scan, egg), "application/dicom", tenant=TENANT,
                     key=egg.egg_id)
        for egg, scan in zip(specs, render_batch(specs), strict=True)
    ]  # fmt: skip
    return [Record(e.partition_key.encode(), e.SerializeToString()) for e in envelopes]


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


def wait_for(store: ResultsStore, count: int, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while store.count_results(TENANT) < count and time.monotonic() < deadline:
        time.sleep(0.3)
    return store.count_results(TENANT)


def produce_until_taken(bus: Bus, records: list[Record]) -> int:
    """Produce, trying again while the bus says it cannot now; the refusals counted."""
    refusals = 0
    while True:
        try:
            bus.produce("scans.raw", records)
            return refusals
        except TransientError:
            refusals += 1
            time.sleep(0.5)


def check_once_each(store: ResultsStore, sent: int) -> None:
    records = store.list_results(TENANT, limit=500).items
    roots = [r.root_id for r in records]
    assert len(roots) == len(set(roots)) == sent  # 0 lost, 0 doubled
    assert store.list_dead_letters(TENANT, limit=10).items == []


def test_the_store_disk_fills_and_space_returns(tmp_path: Path, small_disk: Path) -> None:
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}", store=f"sqlite:///{small_disk / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )  # fmt: skip
    bus, store = open_bus(spec.bus), ResultsStore(spec.store)
    try:
        with pipeline_threads(spec, replicas=1):
            bus.produce("scans.raw", scans(20, seed=1))
            assert wait_for(store, 20) == 20
            filler = fill(small_disk)
            bus.produce("scans.raw", scans(60, seed=2))
            time.sleep(FULL_S)
            stalled = store.count_results(TENANT)
            filler.unlink()  # space returns
            assert wait_for(store, 80) == 80
        check_once_each(store, 80)
    finally:
        bus.close()
        store.close()
    assert stalled < 80  # the disk was full: not everything could be written meanwhile


def test_the_bus_disk_fills_and_space_returns(tmp_path: Path, small_disk: Path) -> None:
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{small_disk / 'bus.db'}", store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )  # fmt: skip
    bus, store = open_bus(spec.bus), ResultsStore(spec.store)
    try:
        with pipeline_threads(spec, replicas=1):
            bus.produce("scans.raw", scans(20, seed=3))
            assert wait_for(store, 20) == 20
            filler = fill(small_disk)
            late = scans(20, seed=4)
            with pytest.raises(TransientError):
                bus.produce("scans.raw", late)  # no room for them: the producer is told so
            time.sleep(FULL_S)
            os.remove(filler)  # space returns
            assert produce_until_taken(bus, late) >= 0
            assert wait_for(store, 40) == 40
        check_once_each(store, 40)
    finally:
        bus.close()
        store.close()
