"""A running system for the browser tests: the real API and the real eggs pipeline.

The API (uvicorn on a free loopback port), the flagship pipeline's stage workers
(decode + preprocess + classify with the shipped model, store, dead letters; each a
thread with its own bus connection) on an embedded bus and a SQLite store in a temp
folder, two tenants with a viewer and a scanner each. Scans are synthetic phantom
MRI slices sent as DICOM through ``POST /v1/scans``, exactly as a scanner would.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from broker_testing import free_port

from inferstream.api import ApiSettings, create_app
from inferstream.api.auth import hash_password, issue_key
from inferstream.apps.eggs import APP
from inferstream.apps.eggs.dicomgen import to_dicom_bytes
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.envelope import now_us
from inferstream.pipeline import load_pipeline
from inferstream.store import DeadLetterRow, ResultRow, ResultsStore
from inferstream.testing import pipeline_threads

JWT_SECRET = "dashboard-test-secret-" + "0123456789abcdef" * 3
PASSWORD = "correct horse battery staple"


@dataclass
class DashboardWorld:
    """The API at ``base_url`` with tenants ``a`` and ``b`` (a viewer and a scanner each)."""

    base_url: str
    store: ResultsStore
    a: str
    b: str
    scanner_keys: dict[str, str]
    next_egg: int = 0
    ids: dict[str, list[str]] = field(default_factory=dict)
    truth: dict[str, str] = field(default_factory=dict)

    def login(self, tenant: str, name: str = "viewer") -> str:
        return f"{tenant}/{name}"

    def ingest(self, tenant: str, count: int, tray: str) -> list[str]:
        """Send ``count`` phantom scans as a scanner would; the ids the API answered."""
        specs = make_specs(count, seed=11, start=self.next_egg)
        self.next_egg += count
        specs = [dataclasses.replace(spec, tray=tray) for spec in specs]
        ids = []
        for spec, image in zip(specs, render_batch(specs), strict=True):
            request = urllib.request.Request(
                f"{self.base_url}/v1/scans",
                data=to_dicom_bytes(image, spec),
                headers={
                    "Content-Type": "application/dicom",
                    "X-API-Key": self.scanner_keys[tenant],
                },
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                ids.append(json.load(answer)["ids"][0])
            self.truth[spec.egg_id] = spec.label
        self.ids.setdefault(tenant, []).extend(ids)
        return ids

    def add_scans(self, tenant: str, count: int, tray: str) -> list[ResultRow]:
        """Ingest scans and wait until the pipeline has stored the record of each."""
        ids = self.ingest(tenant, count, tray)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            made = [self.store.results_of_root(tenant, scan_id) for scan_id in ids]
            if all(made):
                return [record for (record,) in made]  # one record per scan, no fan-out
            time.sleep(0.05)
        raise AssertionError(f"the pipeline did not store {ids} within a minute")

    def add_feedback(self, rows: list[ResultRow]) -> None:
        """The hatch results: each egg's true sex, as the phantom generator drew it."""
        head = APP.heads[0].name
        for row in rows:
            subject = str(row.subject)
            self.store.add_feedback(
                row.tenant, subject, self.truth[subject], app=APP.name, head=head
            )

    def add_dead_letter(self, tenant: str, stage: str) -> None:
        self.next_egg += 1
        self.store.record_dead_letter(
            DeadLetterRow(
                f"dl-{self.next_egg}", tenant, stage, "InvalidScan", "truncated pixel data", 3,
                "scans.raw", 0, self.next_egg, now_us(),
            )
        )  # fmt: skip


def _add_accounts(app: Any, a: str, b: str) -> dict[str, str]:
    accounts = app.state.services.accounts
    keys = {}
    for tenant in (a, b):
        accounts.create_tenant(tenant)
        accounts.create_user(tenant, "viewer", hash_password(PASSWORD), "viewer")
        accounts.create_user(tenant, "scanner", hash_password(PASSWORD), "device")
        keys[tenant] = issue_key(accounts, tenant, "scanner-1", "device").secret
    return keys


@contextmanager
def api_server(settings: ApiSettings) -> Iterator[tuple[str, Any]]:
    """uvicorn serving the real app on a free loopback port: (base URL, app)."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the API server stopped while starting; see the log above")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def running_world(tmp_path: Path) -> Iterator[DashboardWorld]:
    """The API and the eggs pipeline on one embedded bus and SQLite store in ``tmp_path``."""
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}",
        store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )
    settings = ApiSettings(
        pipeline=spec, ingest_topic="scans.raw", jwt_secret=JWT_SECRET, rate_per_s=1e6, burst=10**6
    )
    with api_server(settings) as (base_url, app), pipeline_threads(spec, replicas=1):
        suffix = uuid.uuid4().hex[:6]
        a, b = f"hatchery-a-{suffix}", f"hatchery-b-{suffix}"
        keys = _add_accounts(app, a, b)
        yield DashboardWorld(base_url, app.state.services.store, a, b, keys)
