"""Fault test: the results database down for ``DB_OUTAGE_S`` seconds (30; ``make faults``
5 minutes) while scans flow through the flagship pipeline and the API is asked.

A private PostgreSQL cluster (initdb and pg_ctl on a port of its own; the shared server
is never touched) is stopped as a crash stops it (``pg_ctl -m immediate``), then
started again; nobody intervenes. Meanwhile the workers retry their batches and the API
answers 503 with Retry-After; afterwards every scan is one record, counted by id: 0
lost, 0 doubled, none dead-lettered for the outage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from api_testing import JWT_SECRET, free_port, start_world
from egg_scans import egg_envelopes, flagship, wait_for_records
from flow_testing import produce_envelopes
from pg_testing import private_cluster

from inferstream.api import ApiSettings
from inferstream.apps.eggs import APP
from inferstream.bus import open_bus
from inferstream.store import ResultsStore

pytestmark = pytest.mark.slow

OUTAGE_S = float(os.environ.get("DB_OUTAGE_S", "30"))
PER_PHASE = 60


@pytest.mark.timeout(OUTAGE_S + 240)
def test_the_database_down_loses_nothing_and_the_api_says_503(tmp_path: Path) -> None:
    with private_cluster(free_port()) as cluster:
        spec = flagship(tmp_path, store=cluster.url)
        world_runs = start_world(ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6,
                                             burst=10**6))  # fmt: skip
        world = next(world_runs)
        tenant = world.own
        bus, store = open_bus(spec.bus), ResultsStore(spec.store)
        headers = world.headers(tenant, "viewer")
        outage: list[tuple[int, str | None]] = []
        # The pipeline as it runs in production: `inferstream up`, its own processes.
        with (tmp_path / "up.log").open("wb") as log:
            up = subprocess.Popen(
                [sys.executable, "-m", "inferstream", "up", str(APP.pipeline_path()), "--bus",
                 spec.bus, "--store", spec.store, "--blobs", spec.blobs, "--drain-timeout", "10"],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        try:
            produce_envelopes(bus, "scans.raw", egg_envelopes(PER_PHASE, 1, tenant))
            assert wait_for_records(store, tenant, PER_PHASE) == PER_PHASE
            cluster.stop("immediate")
            down_at = time.monotonic()
            # The bus is up: ingest goes on.
            produce_envelopes(bus, "scans.raw", egg_envelopes(PER_PHASE, 2, tenant))
            while time.monotonic() - down_at < OUTAGE_S:
                answer = world.client.get("/v1/results", headers=headers)
                outage.append((answer.status_code, answer.headers.get("Retry-After")))
                time.sleep(1.0)
            cluster.start()
            stored = wait_for_records(store, tenant, 2 * PER_PHASE)
            records = store.list_results(tenant, limit=500).items
            letters = store.list_dead_letters(tenant, limit=10).items
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(timeout=60)
            bus.close()
            store.close()
            world_runs.close()
    assert outage and {status for status, _ in outage} == {503}, outage[:3]
    assert all(retry is not None and int(retry) >= 1 for _, retry in outage)
    assert stored == 2 * PER_PHASE
    roots = [r.root_id for r in records]
    assert len(roots) == len(set(roots)) == 2 * PER_PHASE  # 0 lost, 0 doubled
    assert letters == []  # an outage is waited out, never a dead letter
