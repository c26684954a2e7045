"""Fault tests of the network: the broker away 30 s, the broker restarted for real, and a
slow link that drops its connections, between the workers and the broker and database.

The flagship runs as a centre fed by an edge agent over the Kafka-protocol bus (the
edge's folder -> scans.edge -> check_ingest -> the flagship's stages), with the test's
own broker. Each link goes through a :class:`~tcp_proxy.TcpProxy` the test controls (the
broker advertises the proxy's address, so every client reconnects through it). Nobody
intervenes: producers wait and resume, the API answers 503 with Retry-After meanwhile,
and afterwards every scan is one record, counted by egg id: 0 lost, 0 doubled, no dead
letter for the fault.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_testing import JWT_SECRET, dicom_bytes, start_world
from broker_testing import free_port, s3_server, stop, tansu
from egg_scans import drop_scans, egg_envelopes, flagship_behind_ingest, wait_for_records
from flow_testing import drain_topic
from pg_testing import POSTGRES_URL, private_schema
from tcp_proxy import TcpProxy

from inferstream.api import ApiSettings
from inferstream.apps.eggs import APP
from inferstream.bus import open_bus
from inferstream.edge import EdgeSettings, run_edge
from inferstream.envelope import Envelope
from inferstream.pipeline import PipelineSpec
from inferstream.store import ResultsStore
from inferstream.testing import pipeline_threads

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

OUTAGE_S = float(os.environ.get("BROKER_OUTAGE_S", "30"))
PER_PHASE = 40
TENANT = "farm"


@dataclass
class Centre:
    """The flagship fed by an edge agent's folder, on ``bus``; the test drops scans."""

    spec: PipelineSpec
    inbox: Path
    store: ResultsStore  # read directly, never through a proxy

    def drop(self, phase: int) -> list[str]:
        scans = egg_envelopes(PER_PHASE, seed=700 + phase, tenant=TENANT)
        drop_scans(self.inbox, scans, prefix=f"phase{phase}")
        return [scan.partition_key for scan in scans]

    def assert_each_scan_stored_once(self, egg_ids: list[str]) -> None:
        assert wait_for_records(self.store, TENANT, len(egg_ids), timeout_s=180) == len(egg_ids)
        records = self.store.list_results(TENANT, limit=1000).items
        assert sorted(r.subject for r in records) == sorted(egg_ids)  # 0 lost, 0 doubled
        assert all(r.label for r in records)
        assert self.store.list_dead_letters(TENANT, limit=10).items == []


@contextmanager
def centre(folder: Path, bus: str, store: str | None = None, direct: str | None = None
           ) -> Iterator[Centre]:  # fmt: skip
    """Workers (one per stage, in threads) and an edge agent, stopped on exit; ``direct``
    is the store's URL without the proxy, for counting."""
    spec = flagship_behind_ingest(folder, bus, store=store)
    inbox = folder / "inbox"
    inbox.mkdir()
    edge = EdgeSettings(buffer=folder / "buffer", api="", api_key="", folder=inbox, bus=bus,
                        topic="scans.edge", tenant=TENANT, report_s=5)  # fmt: skip
    halt = threading.Event()
    with ExitStack() as stack:
        counting = ResultsStore(direct or spec.store)
        stack.callback(counting.close)
        stack.enter_context(pipeline_threads(spec, replicas=1))
        agent = threading.Thread(target=run_edge, args=(edge, APP, halt, lambda _: None))
        agent.start()
        stack.callback(agent.join, 60)
        stack.callback(halt.set)
        yield Centre(spec, inbox, counting)


@pytest.mark.timeout(OUTAGE_S + 240)
def test_the_broker_away_30_s_producers_wait_and_the_api_says_503(tmp_path: Path) -> None:
    port = free_port()
    with TcpProxy(port) as link:
        broker = tansu(port, tmp_path / "tansu.log", advertised_port=link.port)
        try:
            bus = f"kafka://{link.address}"
            with centre(tmp_path, bus) as run:
                api_runs = start_world(ApiSettings(run.spec, "scans.raw", JWT_SECRET))
                world = next(api_runs)
                upload = {**world.headers(world.own, "device"), "Content-Type": "application/dicom"}
                eggs = run.drop(1)
                run.assert_each_scan_stored_once(eggs)
                link.down()
                down_at = time.monotonic()
                eggs += run.drop(2)  # the edge agent holds these until the bus is back
                answers = []
                while time.monotonic() - down_at < OUTAGE_S:
                    answer = world.client.post("/v1/scans", content=dicom_bytes(seed=len(answers)),
                                               headers=upload)  # fmt: skip
                    answers.append((answer.status_code, answer.headers.get("Retry-After")))
                    ready = world.client.get("/readyz").status_code
                    answers.append((ready, "1" if ready == 503 else None))
                link.up()
                eggs += run.drop(3)
                run.assert_each_scan_stored_once(eggs)
                after = world.client.post("/v1/scans", content=dicom_bytes(seed=99), headers=upload)
                api_runs.close()
        finally:
            stop(broker)
    assert answers and {status for status, _ in answers} == {503}, answers[:4]
    assert all(retry is not None and int(retry) >= 1 for _, retry in answers)
    assert after.status_code == 202, after.text


@pytest.mark.timeout(300)
def test_the_broker_restarted_keeps_its_log_and_everyone_resumes(tmp_path: Path) -> None:
    """A real restart: the broker killed (SIGKILL) and started again on the same port,
    its log kept in a bucket of the S3 test server."""
    with s3_server(tmp_path / "s3.log") as s3:
        storage = f"s3://{s3.new_bucket()}/"
        port = free_port()
        log = tmp_path / "tansu.log"
        broker = tansu(port, log, storage=storage, env=s3.env)
        try:
            with centre(tmp_path, f"kafka://127.0.0.1:{port}") as run:
                eggs = run.drop(1)
                run.assert_each_scan_stored_once(eggs)
                eggs += run.drop(2)
                time.sleep(0.5)  # phase 2 on its way from the edge through the stages
                broker.kill()
                broker.wait()
                time.sleep(5.0)
                broker = tansu(port, log, storage=storage, env=s3.env)
                eggs += run.drop(3)
                run.assert_each_scan_stored_once(eggs)
                bus = open_bus(run.spec.bus)
                kept = drain_topic(bus, "scans.edge", 3 * PER_PHASE, timeout_s=60)
                bus.close()
        finally:
            stop(broker)
    # What was written before the kill is still in the log after it (memory storage
    # would have started empty).
    sent = {Envelope.FromString(message.value).partition_key for message in kept}
    assert set(eggs) <= sent


@pytest.mark.long  # make faults; the two broker faults above run in CI
@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_a_slow_link_that_drops_its_connections_then_a_partition_loses_nothing(
    tmp_path: Path,
) -> None:
    """20 ms on every chunk both ways, to the broker and to PostgreSQL, and every
    connection reset every 2 s while the scans flow; then the database partitioned
    away for 5 s."""
    port = free_port()
    with ExitStack() as stack:
        to_broker = stack.enter_context(TcpProxy(port))
        broker = tansu(port, tmp_path / "tansu.log", advertised_port=to_broker.port)
        stack.callback(stop, broker)
        direct = stack.enter_context(private_schema(POSTGRES_URL, "slowlink"))
        to_db = stack.enter_context(TcpProxy(5432))
        through = direct.replace("127.0.0.1:5432", to_db.address)
        run = stack.enter_context(centre(tmp_path, f"kafka://{to_broker.address}", through, direct))
        eggs = run.drop(1)
        run.assert_each_scan_stored_once(eggs)
        for link in (to_broker, to_db):
            link.delay_s = 0.02
        eggs += run.drop(2)
        resets = 0
        for _ in range(8):
            time.sleep(2.0)
            resets += to_broker.reset_connections() + to_db.reset_connections()
        for link in (to_broker, to_db):
            link.delay_s = 0.0
        # A partition: the database's packets dropped for 5 s, no reset; open
        # connections hang, then carry on as TCP delivers what waited.
        to_db.partition()
        eggs += run.drop(3)
        time.sleep(5.0)
        to_db.up()
        run.assert_each_scan_stored_once(eggs)
    assert resets > 0
