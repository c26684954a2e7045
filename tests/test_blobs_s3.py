"""The blob store on a real S3-API server (moto's server mode on 127.0.0.1), reached
through the standard AWS settings: its URL, its errors (transient or saying what to
do), a purge and a put of the same bytes crossing, the model registry's artifacts, and
the flagship end to end with every scan's bytes in the bucket, counted by id.

What every blob store promises is in ``test_blobs*.py``, run on this store too."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from blob_worlds import S3World, s3_world, use_s3
from broker_testing import S3Server, free_port, s3_server
from egg_scans import egg_envelopes, flagship, wait_for_records
from flow_testing import produce_envelopes
from pg_testing import private_schema
from tcp_proxy import TcpProxy

from inferstream import blobs_s3
from inferstream.application import find_model
from inferstream.blobs import check_in, content_key, open_blob_store
from inferstream.blobs_s3 import MARKER_FOLDER, S3BlobStore
from inferstream.bus import open_bus
from inferstream.envelope import Envelope, now_us
from inferstream.errors import BlobError, BlobStoreUnavailable, ConfigError, TransientError
from inferstream.pipeline import PipelineSpec
from inferstream.registry import ModelRegistry
from inferstream.store import ResultsStore
from inferstream.testing import pipeline_threads

TENANT = "farm"


@pytest.fixture
def world(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3World]:
    made = s3_world(monkeypatch, s3, "site-1/blobs")
    try:
        yield made
    finally:
        made.close()


def test_the_url_names_a_bucket_and_a_prefix_that_stores_do_not_cross(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_s3(monkeypatch, s3)
    bucket = s3.new_bucket()
    one, two = open_blob_store(f"s3://{bucket}/site-1/"), open_blob_store(f"s3://{bucket}/site-2")
    try:
        assert isinstance(one, S3BlobStore) and one.url == f"s3://{bucket}/site-1"
        ref = one.put(b"scan", TENANT)
        assert ref.uri == f"s3://{bucket}/site-1/{content_key(ref.sha256, TENANT)}"
        two.put(b"scan", "other-farm")
        assert (one.tenants(), two.tenants()) == ([TENANT], ["other-farm"])
        with pytest.raises(BlobError, match="missing"):
            two.get(ref, TENANT)  # the same digest and tenant, under another prefix
    finally:
        one.close()  # type: ignore[attr-defined]
        two.close()  # type: ignore[attr-defined]
    for bad in ("s3:///blobs", "s3://Not_A_Bucket/x", f"s3://{bucket}/x?versionId=1"):
        with pytest.raises(ConfigError, match="s3://bucket/prefix"):
            open_blob_store(bad)


def test_without_boto3_the_error_names_the_extra_to_install() -> None:
    probe = (
        "import sys; sys.modules['boto3'] = None\n"  # as if boto3 were not installed
        "from inferstream.blobs import open_blob_store\n"
        "try:\n    open_blob_store('s3://bucket/blobs')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "MissingExtraError boto3 is not installed; install it with: pip install 'inferstream[s3]'"
    )
    with pytest.raises(ConfigError, match="use file:///path/to/folder or s3://bucket/prefix"):
        open_blob_store("gs://bucket/blobs")


def test_a_missing_bucket_says_so_and_what_to_do(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_s3(monkeypatch, s3)
    store = open_blob_store("s3://no-such-bucket-here/blobs")
    try:
        for attempt in (lambda: store.put(b"x", TENANT), store.tenants):
            with pytest.raises(BlobError, match="bucket 'no-such-bucket-here' does not exist; "
                                                "create it") as missing:  # fmt: skip
                attempt()
            assert not isinstance(missing.value, TransientError)
    finally:
        store.close()  # type: ignore[attr-defined]


def test_credentials_the_server_refuses_are_an_error_naming_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that checks every request: it knows no access key, so it knows ours not.
    with s3_server(tmp_path / "moto.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as strict:
        use_s3(monkeypatch, strict)
        store = open_blob_store("s3://some-bucket/blobs")
        try:
            with pytest.raises(BlobError, match=r"refused \(InvalidAccessKeyId\).*AWS_ACCESS"):
                store.put(b"x", TENANT)
        finally:
            store.close()  # type: ignore[attr-defined]


def test_a_server_out_of_reach_is_a_transient_error(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_s3(monkeypatch, s3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # boto3's own retries: none, to be quick
    store = open_blob_store("s3://any-bucket/blobs")
    try:
        for attempt in (lambda: store.put(b"x", TENANT), store.tenants):
            with pytest.raises(BlobStoreUnavailable, match="unreachable") as away:
                attempt()
            # A transient error, which workers wait out: never one a step turns into a
            # dead letter (those catch BlobError).
            assert isinstance(away.value, TransientError)
            assert not isinstance(away.value, BlobError)
    finally:
        store.close()  # type: ignore[attr-defined]


def test_a_put_meeting_a_purge_waits_for_it_and_writes_again(world: S3World) -> None:
    data = b"the same bytes as an expired output"
    key = content_key(world.store.put(data, TENANT).sha256, TENANT)
    # A purge under way, as another process runs it: its marker is written, and the
    # blob is deleted a moment later, after the put below has written the bytes.
    marker = f"{MARKER_FOLDER}/{key}/another-host"
    world.write_raw(marker, b"")

    def purge() -> None:
        time.sleep(0.5)
        world.remove_raw(key)
        world.remove_raw(marker)

    purging = threading.Thread(target=purge)
    purging.start()
    world.store.put(data, TENANT)
    purging.join()
    assert world.raw(key) == data  # written again after the purge, not lost to it
    assert world.stored_keys() == {key}


def test_a_marker_left_by_a_dead_purge_holds_puts_back_no_longer_than_its_life(
    world: S3World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs_s3, "MARKER_TTL_S", 1.0)
    data = b"bytes whose purge died"
    key = content_key(world.store.put(data, TENANT).sha256, TENANT)
    world.write_raw(f"{MARKER_FOLDER}/{key}/dead-purge", b"")
    time.sleep(2.1)  # the marker's age is counted in the server's whole seconds
    world.remove_raw(key)
    world.store.put(data, TENANT)  # returns: the marker is too old to hold it
    assert world.raw(key) == data


def test_a_purge_spares_a_blob_put_in_its_second_and_removes_its_marker(world: S3World) -> None:
    store = world.store
    cutoff = now_us()
    ref = store.put(b"put just now", TENANT)  # after the cutoff: in use since
    # S3 keeps whole seconds: the object's time is rounded down, often to before the
    # cutoff; the blob counts as used to the end of that second.
    assert store.delete(ref.sha256, TENANT, unused_since_us=cutoff) is False
    assert world.stored_keys() == {content_key(ref.sha256, TENANT)}
    assert store.delete(ref.sha256, TENANT, unused_since_us=cutoff + 3_000_000) is True
    assert world.stored_keys() == set()


def test_the_registry_keeps_models_in_the_bucket_and_heals_a_lost_one(
    world: S3World, tmp_path: Path
) -> None:
    folder = find_model("egg_sexing")
    assert folder is not None
    graph = (folder / "egg_sexing.onnx").read_bytes()
    with ResultsStore(f"sqlite:///{tmp_path / 'results.db'}") as store:
        registry = ModelRegistry(store, world.store)
        version = registry.register_files(folder / "egg_sexing.onnx", actor="ops", reason="t")
        key = f"models_registry/models/egg_sexing/{version.version}/model.onnx"
        assert world.raw(key) == graph
        world.remove_raw(key)
        assert registry.load(version).info.name == "egg_sexing"  # the shipped file's bytes
        assert world.raw(key) == graph  # put back in the bucket


def test_the_registry_heals_nothing_while_the_server_is_away(
    world: S3World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = find_model("egg_sexing")
    assert folder is not None
    with ResultsStore(f"sqlite:///{tmp_path / 'results.db'}") as store:
        version = ModelRegistry(store, world.store).register_files(
            folder / "egg_sexing.onnx", actor="ops", reason="t"
        )
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        away = open_blob_store(world.store.url)
        try:
            with pytest.raises(BlobStoreUnavailable):
                ModelRegistry(store, away).load(version)
        finally:
            away.close()  # type: ignore[attr-defined]
    assert "restored" not in caplog.text  # a server away is no lost artifact


# -- the flagship -------------------------------------------------------------------


def claim_checked(store_url: str, scans: Sequence[Envelope]) -> list[Envelope]:
    """``scans`` as a producer sends them with the claim check: bytes in the blob store,
    the reference on the bus."""
    store = open_blob_store(store_url)
    try:
        checked = [check_in(scan, store, threshold=1024) for scan in scans]
    finally:
        store.close()  # type: ignore[attr-defined]
    assert {scan.payload.WhichOneof("body") for scan in checked} == {"blob"}
    return checked


def assert_each_scan_stored_once(store: ResultsStore, tenant: str, scans: list[Envelope]) -> None:
    records = store.list_results(tenant, limit=1000).items
    assert sorted(r.root_id for r in records) == sorted(s.id for s in scans)  # 0 lost, 0 doubled
    assert store.list_dead_letters(tenant, limit=5).items == []


def on_s3(spec: PipelineSpec, world: S3World) -> PipelineSpec:
    return spec.with_urls(blobs=world.store.url)


def test_the_flagship_reads_every_scan_from_the_bucket_and_stores_it_once(
    world: S3World, tmp_path: Path
) -> None:
    spec = on_s3(flagship(tmp_path), world)
    scans = claim_checked(spec.blobs, egg_envelopes(24, seed=5, tenant=TENANT))
    bus, store = open_bus(spec.bus), ResultsStore(spec.store)
    try:
        with pipeline_threads(spec, replicas=1):
            produce_envelopes(bus, "scans.raw", scans)
            assert wait_for_records(store, TENANT, len(scans)) == len(scans)
            time.sleep(0.5)  # anything doubled would land now
        assert_each_scan_stored_once(store, TENANT, scans)
    finally:
        bus.close()
        store.close()
    kept = {k for k in world.stored_keys() if k.startswith(f"{TENANT}/")}
    assert kept == {content_key(s.payload.blob.sha256, TENANT) for s in scans}
    # The workers' registry took the model the application ships into the bucket too.
    assert any(k.startswith("models_registry/models/egg_sexing/") for k in world.stored_keys())


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.postgres
def test_the_flagship_on_kafka_postgresql_and_s3_waits_out_the_server_away(
    s3: S3Server,
    kafka_url: str,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = f"farm-{uuid.uuid4().hex[:8]}"  # the session's broker is shared
    with TcpProxy(int(s3.endpoint.rsplit(":", 1)[1])) as link, \
            private_schema(postgres_url, "s3eggs") as store_url:  # fmt: skip
        world = s3_world(monkeypatch, S3Server(f"http://{link.address}"), "eggs")
        spec = on_s3(flagship(tmp_path, bus=kafka_url, store=store_url), world)
        first = claim_checked(spec.blobs, egg_envelopes(24, seed=6, tenant=tenant))
        second = claim_checked(spec.blobs, egg_envelopes(24, seed=7, tenant=tenant))
        bus, store = open_bus(spec.bus), ResultsStore(spec.store)
        try:
            with pipeline_threads(spec, replicas=1):
                produce_envelopes(bus, "scans.raw", first)
                assert wait_for_records(store, tenant, 24) == 24
                link.down()  # the S3 server away: no scan's bytes can be read
                produce_envelopes(bus, "scans.raw", second)
                time.sleep(8.0)
                stalled = store.count_results(tenant)
                link.up()
                assert wait_for_records(store, tenant, 48) == 48
                time.sleep(0.5)
            assert_each_scan_stored_once(store, tenant, first + second)
        finally:
            bus.close()
            store.close()
            world.close()
    assert stalled == 24  # nothing of the second half could be read meanwhile
