"""The scanner simulator: valid DICOM per emission, N scanners, ground truth kept aside."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from inferstream.apps.eggs.dicom import decode
from inferstream.apps.eggs.simulator import (
    EGG_PLACEHOLDER,
    TRAY_PLACEHOLDER,
    ScannerSimulator,
    ScanPool,
    SendingStopped,
    stamp,
)
from inferstream.bus import open_bus
from inferstream.envelope import parse
from inferstream.errors import BusFullError, ConfigError


@pytest.fixture(scope="module")
def pool() -> ScanPool:
    return ScanPool.build(48, seed=11)


def test_emitted_scans_are_valid_dicom_with_their_own_ids(pool: ScanPool, tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    bus.create_topic("scans.raw", 2)
    sim = ScannerSimulator(bus, "scans.raw", pool, rate=1e6, tenant="farm", run="t001", scanners=6)
    emission = sim.emit(120)
    consumer = bus.consumer("check", ["scans.raw"])
    messages = []
    while len(messages) < 120:
        messages += consumer.poll_batch(200, 0.5)
    bus.close()
    envs = [parse(m.value) for m in messages]
    scans = [decode(e.payload.inline) for e in envs]
    assert len({s.egg_id for s in scans}) == 120
    assert all(s.egg_id == e.attributes["egg_id"] for s, e in zip(scans, envs, strict=True))
    assert all(s.scanner == e.attributes["scanner"] for s, e in zip(scans, envs, strict=True))
    assert Counter(s.scanner for s in scans) == {f"SCANNER-{i:02d}": 20 for i in range(1, 7)}
    assert {s.tray for s in scans} == {
        "TRAY-00000000",
        "TRAY-00000001",
        "TRAY-00000002",
        "TRAY-00000003",
    }
    assert set(emission.truth) == {e.id for e in envs}
    assert set(emission.truth.values()) <= {"female", "male", "not_developing"}
    assert all(e.tenant == "farm" for e in envs)


def test_a_full_bus_stops_the_scanners_with_the_truth_of_what_it_accepted(
    pool: ScanPool, small_disk: Path
) -> None:
    bus = open_bus(f"sqlite:///{small_disk / 'bus.db'}")
    try:
        bus.create_topic("scans.raw", 2)
        sim = ScannerSimulator(bus, "scans.raw", pool, rate=2000, tenant="farm", run="t002")
        with pytest.raises(SendingStopped) as caught:
            sim.emit(1000)  # ~33 MB of scans for a 4 MB disk
        assert isinstance(caught.value.cause, BusFullError)
        accepted = caught.value.emission.truth
        assert 0 < len(accepted) < 1000
        assert sum(p.high - p.low for p in bus.partitions("scans.raw")) == len(accepted)
    finally:
        bus.close()


def test_scanner_count_is_checked(pool: ScanPool, tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    with pytest.raises(ConfigError, match=r"scanners must be 1\.\.99"):
        ScannerSimulator(bus, "scans.raw", pool, rate=1, tenant="t", run="r", scanners=0)
    bus.close()


def test_the_demo_refuses_a_taken_dashboard_address_with_what_to_do() -> None:
    import socket

    from inferstream.apps.eggs.demo import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="--no-serve"):
            check_port_free(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="--serve HOST:PORT"):
        check_port_free("127.0.0.1:notaport")


def test_stamping_replaces_every_placeholder_in_place(pool: ScanPool) -> None:
    """Stamping copies the pool scan once, at offsets found once per pool scan: the
    bytes are those of replacing every placeholder, the length unchanged."""
    for number in (0, 7, 1234, 99_999_999):
        scan, scanner = pool.pick(number, 8)
        data, egg_id, tray = stamp(scan, number, "r001", scanner)
        reference = (
            scan.dicom.replace(EGG_PLACEHOLDER.encode(), egg_id.encode())
            .replace(TRAY_PLACEHOLDER.encode(), tray.encode())
            .replace(scan.scanner.encode(), scanner.encode())
        )
        assert data == reference and len(data) == len(scan.dicom)
        assert EGG_PLACEHOLDER.encode() not in data and TRAY_PLACEHOLDER.encode() not in data
        assert egg_id.encode() in data and scanner.encode() in data
    # A value that would change an element's length is refused, not written.
    with pytest.raises(ConfigError, match="must be as long"):
        stamp(pool.scans[0], 1, "r001", "SCANNER-100")
