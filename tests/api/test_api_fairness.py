"""Overload fairness: one tenant sending ten times its share cannot queue ahead of
another's scans, and nobody's data is lost.

Each tenant may send ``tenant_scans_per_s`` scans a second through the API, all its
credentials together (``serve --tenant-rate``). Beyond it the API answers 429 with
Retry-After before doing any work on the scans, and the tenant's edge agent keeps them
in its buffer and sends them again when told. So the bus never holds more than a
tenant's share of its scans ahead of the others'. What that does to the other tenant's
latency is measured in ``bench/fairness_bench.py`` (docs/benchmarks.md); here, the
mechanism, counted by id: the flooder throttled, the other never, every scan of both
stored once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from api_testing import JWT_SECRET, dicom_bytes, serve_app, start_world
from egg_scans import drop_scans, egg_envelopes, flagship, wait_for_records

from inferstream.api import ApiSettings
from inferstream.apps.eggs import APP
from inferstream.edge import EdgeSettings, run_edge
from inferstream.store import ResultsStore
from inferstream.testing import pipeline_threads

SHARE = 40  # scans/s per tenant
#: The share of the test that floods from one client, one request after another: so low
#: that a loaded machine (a request in 100 ms) still sends faster than it.
SLOW_SHARE = 5
BATCH = 16


def _settings(tmp_path: Path, share: float = SHARE) -> ApiSettings:
    return ApiSettings(flagship(tmp_path), "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6,
                       max_batch=64, tenant_scans_per_s=share, tenant_burst=64)  # fmt: skip


def test_a_tenant_over_its_share_hears_429_and_the_other_does_not(tmp_path: Path) -> None:
    worlds = start_world(_settings(tmp_path, SLOW_SHARE))
    world = next(worlds)
    flooder = {**world.headers(world.own, "device"), "Content-Type": "application/dicom"}
    other = {**world.headers(world.other, "device"), "Content-Type": "application/dicom"}
    started = time.monotonic()
    answers = [world.client.post("/v1/scans", content=dicom_bytes(seed=i), headers=flooder)
               for i in range(200)]  # fmt: skip
    elapsed = time.monotonic() - started
    theirs = world.client.post("/v1/scans", content=dicom_bytes(seed=500), headers=other)
    worlds.close()
    statuses = [answer.status_code for answer in answers]
    assert statuses[:64] == [202] * 64  # the burst: one batch (64)
    assert statuses.count(202) <= 64 + SLOW_SHARE * elapsed + 1  # then the share, no more
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(refused) == len(answers) - statuses.count(202) > 0
    assert all(int(answer.headers["Retry-After"]) >= 1 for answer in refused)
    assert "this tenant" in refused[0].json()["detail"]
    assert theirs.status_code == 202, theirs.text


class _Agent:
    """An edge agent of one tenant in a thread, its reports kept."""

    def __init__(self, tmp_path: Path, name: str, api: str, key: str) -> None:
        self.inbox = tmp_path / f"{name}-inbox"
        self.inbox.mkdir()
        self.reports: list[str] = []
        self.stop = threading.Event()
        settings = EdgeSettings(buffer=tmp_path / f"{name}-buffer", api=api, api_key=key,
                                folder=self.inbox, batch=BATCH, report_s=0.5)  # fmt: skip
        said = self.reports.append
        self.thread = threading.Thread(target=run_edge, args=(settings, APP, self.stop, said))
        self.thread.start()

    def retries(self) -> int:
        last = [line for line in self.reports if "retries" in line][-1]
        return int(last.rsplit("retries", 1)[1])

    def end(self) -> int:
        self.stop.set()
        self.thread.join(timeout=60)
        return self.retries()


def test_ten_times_a_share_is_taken_at_the_share_and_nothing_is_lost(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    worlds = start_world(settings)
    world = next(worlds)
    keys = {tenant: world.headers(tenant, "device")["X-API-Key"] for tenant in world.tenants}
    heavy = egg_envelopes(10 * SHARE, seed=61)  # a second of ten shares
    light = egg_envelopes(SHARE, seed=62)  # a second of its share
    store = ResultsStore(settings.pipeline.store)
    with pipeline_threads(settings.pipeline, replicas=1), serve_app(settings) as port:
        api = f"http://127.0.0.1:{port}"
        flooder = _Agent(tmp_path, "flooder", api, keys[world.own])
        fair = _Agent(tmp_path, "fair", api, keys[world.other])
        drop_scans(flooder.inbox, heavy)
        drop_scans(fair.inbox, light)
        stored = {t: wait_for_records(store, t, n) for t, n in
                  ((world.own, len(heavy)), (world.other, len(light)))}  # fmt: skip
        retries = {"flooder": flooder.end(), "fair": fair.end()}
    subjects = {t: sorted(r.subject for r in store.list_results(t, limit=1000).items)
                for t in world.tenants}  # fmt: skip
    letters = [store.list_dead_letters(t, limit=5).items for t in world.tenants]
    store.close()
    worlds.close()
    assert stored == {world.own: len(heavy), world.other: len(light)}
    assert subjects[world.own] == sorted(e.partition_key for e in heavy)  # 0 lost, 0 doubled
    assert subjects[world.other] == sorted(e.partition_key for e in light)
    assert letters == [[], []]
    assert retries["flooder"] > 0 and retries["fair"] == 0, retries
