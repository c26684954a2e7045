"""Bells of the embedded bus: a produce wakes the consumers of that topic, and only them."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from inferstream.bus import Record, open_bus
from inferstream.bus.embedded_wake import Bells, Doorbell, bell_path


def test_a_produce_rings_the_topics_bell(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    try:
        bus.create_topic("scans", 2)  # topic ids are SQLite rowids: 1, then 2
        bus.create_topic("other", 1)
        doorbell = Doorbell.open(tmp_path / "bus.db", [1])
        assert isinstance(doorbell, Doorbell)  # Linux: inotify is there
        try:
            bus.produce("other", [Record(b"k", b"v")])
            assert doorbell.wait(0.2) is False  # another topic's batch does not wake it
            bus.produce("scans", [Record(b"k", b"v")])
            assert doorbell.wait(30) is True
            assert doorbell.wait(0.05) is False  # one ring, one wake
        finally:
            doorbell.close()
    finally:
        bus.close()


def test_a_waiting_consumer_is_woken_by_a_ring_from_another_thread(tmp_path: Path) -> None:
    database = tmp_path / "bus.db"
    doorbell = Doorbell.open(database, [7])
    bells = Bells(database)
    ringer = threading.Timer(0.1, bells.ring, args=(7,))
    try:
        ringer.start()
        assert doorbell.wait(30) is True
    finally:
        ringer.cancel()
        bells.close()
        doorbell.close()


def test_a_ring_reads_the_bell_and_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """A write would change the file's mtime, an inode update that waits behind the
    disk's journal; a read changes nothing and still wakes the watchers."""
    database = tmp_path / "bus.db"
    doorbell = Doorbell.open(database, [7])
    bells = Bells(database)
    try:
        before = bell_path(database, 7).stat()
        time.sleep(0.05)  # past the file system's timestamp granularity
        bells.ring(7)
        assert doorbell.wait(30) is True
        after = bell_path(database, 7).stat()
        assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, 1)
        # A producer of an older release rang by writing the byte: that wakes it too.
        bell_path(database, 7).write_bytes(b"\x01")
        assert doorbell.wait(30) is True
    finally:
        bells.close()
        doorbell.close()


def test_without_bells_messages_still_flow_by_polling(tmp_path: Path) -> None:
    """A bell folder that cannot be made (here a file is in its way) costs only speed."""
    (tmp_path / "bus.db-bells").write_text("in the way")
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    try:
        bus.create_topic("scans", 1)
        consumer = bus.consumer("g", ["scans"])
        bus.produce("scans", [Record(b"k", b"v")])  # committed although the bell fails
        assert [m.value for m in consumer.poll_batch(10, 30)] == [b"v"]
        consumer.close()
    finally:
        bus.close()


def test_a_bell_that_cannot_be_rung_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "bus.db-bells").write_text("in the way")
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    try:
        bus.create_topic("scans", 1)
        with caplog.at_level(logging.WARNING, logger="inferstream.bus.embedded_wake"):
            for _ in range(3):
                bus.produce("scans", [Record(b"k", b"v")])
        assert [r.getMessage().count("cannot ring") for r in caplog.records] == [1]
    finally:
        bus.close()


def test_a_poll_reads_the_log_again_only_when_a_bell_rings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a worker's batches a poll waits on the bell, not on a timer: a silent
    bell until the deadline means nothing was committed (each read is a transaction;
    re-reading every 2-8 ms cost four of them per batch at 100 scans/s)."""
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    try:
        bus.create_topic("scans", 1)
        consumer = bus.consumer("g", ["scans"])
        reads = []
        fetch = consumer._fetch  # type: ignore[attr-defined]
        monkeypatch.setattr(consumer, "_fetch", lambda n: reads.append(n) or fetch(n))
        assert consumer.poll_batch(10, 0.04) == []
        assert len(reads) == 1  # read once, then waited the 40 ms out on the bell
        producer = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
        threading.Timer(0.2, producer.produce, args=("scans", [Record(b"k", b"v")])).start()
        started = time.monotonic()
        assert [m.value for m in consumer.poll_batch(10, 30)] == [b"v"]
        waited = time.monotonic() - started
        # One read before the wait, one when the bell rang, and a read per 50 ms the
        # bell stayed silent (the cap that notices what rings no bell, e.g. a rebalance).
        assert len(reads) - 1 <= 2 + waited / 0.05
        producer.close()
        consumer.close()
    finally:
        bus.close()
