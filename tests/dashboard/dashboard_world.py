"""A running API for the browser tests: real app, embedded bus, SQLite store, two tenants.

Scans go in through the real ingest route (so the image endpoint has their bytes);
their predictions are written with the store's ``upsert_results``, standing in for
the classify stage until the flagship model ships (the result id is the scan id,
as the real ``store_results`` step writes it).
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from inferstream.api import ApiSettings, create_app
from inferstream.api.auth import hash_password, issue_key
from inferstream.envelope import now_us
from inferstream.examples import example_path
from inferstream.pipeline import load_pipeline
from inferstream.store import DeadLetterRow, ResultRow, ResultsStore

JWT_SECRET = "dashboard-test-secret-" + "0123456789abcdef" * 3
PASSWORD = "correct horse battery staple"
LABELS = ("female", "male", "not_developing")


def egg_dicom(number: int, tray: str) -> bytes:
    """A 64x64 MR slice of a bright ellipse (an egg) on a dark field."""
    yy, xx = np.mgrid[0:64, 0:64]
    egg = ((xx - 32) / 22.0) ** 2 + ((yy - 32) / 28.0) ** 2 <= 1.0
    rng = np.random.default_rng(number)
    pixels = (egg * 30000 + rng.integers(0, 3000, (64, 64))).astype(np.uint16)
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"sop{number}"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study{number}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series{number}"])
    ds.Modality, ds.Manufacturer = "MR", "inferstream-sim"
    ds.PatientID = f"EGG-{number:06d}"
    ds.PatientName = f"EGG^EGG-{number:06d}"
    ds.AccessionNumber, ds.StationName = tray, "SCANNER-01"
    ds.AcquisitionDateTime = time.strftime("%Y%m%d%H%M%S.000000", time.gmtime())
    ds.ClinicalTrialTimePointID = "12"
    ds.MagneticFieldStrength, ds.RepetitionTime, ds.EchoTime = 9.4, 500.0, 12.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = 64, 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DashboardWorld:
    """The API at ``base_url`` with tenants ``a`` and ``b`` (a viewer each, a scanner in a)."""

    base_url: str
    store: ResultsStore
    a: str
    b: str
    scanner_keys: dict[str, str]
    numbers: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**6)))
    ids: dict[str, list[str]] = field(default_factory=dict)

    def login(self, tenant: str, name: str = "viewer") -> str:
        return f"{tenant}/{name}"

    def add_scans(self, tenant: str, count: int, tray: str) -> list[ResultRow]:
        """Ingest ``count`` scans through the API and store a prediction for each."""
        rows = []
        for _ in range(count):
            number = next(self.numbers)
            request = urllib.request.Request(
                f"{self.base_url}/v1/scans",
                data=egg_dicom(number, tray),
                headers={
                    "Content-Type": "application/dicom",
                    "X-API-Key": self.scanner_keys[tenant],
                },
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                scan_id = json.load(answer)["ids"][0]
            rows.append(self._prediction(tenant, scan_id, number, tray))
        self.store.upsert_results(rows)
        self.ids.setdefault(tenant, []).extend(row.id for row in rows)
        return rows

    def _prediction(self, tenant: str, scan_id: str, number: int, tray: str) -> ResultRow:
        label = LABELS[number % 3 if number % 5 else 0]
        confidence = 0.5 + (number * 37 % 50) / 100
        others = (1 - confidence) / 2
        scores = {name: confidence if name == label else others for name in LABELS}
        stored = now_us()
        latency_ms = 15.0 + number * 7 % 60
        created = stored - int(latency_ms * 1000)
        return ResultRow(
            id=scan_id,
            tenant=tenant,
            label=label,
            confidence=confidence,
            scores=scores,
            model_name="egg_sexing",
            model_version="1.0.0" if number % 4 else "1.1.0",
            created_at_us=created,
            ingested_at_us=created + 2000,
            stored_at_us=stored,
            latency_ms=latency_ms,
            egg_id=f"EGG-{number:06d}",
            tray=tray,
            scanner="SCANNER-01",
            lineage=[
                {"stage": "classify", "worker": "classify-0", "at_us": stored - 3000},
                {"stage": "store", "worker": "store-0", "at_us": stored},
            ],
            trace_id=uuid.uuid4().hex,
        )

    def add_feedback(self, rows: list[ResultRow]) -> None:
        for i, row in enumerate(rows):
            truth = row.label if i % 3 else "male"
            self.store.add_feedback(row.tenant, str(row.egg_id), truth)

    def add_dead_letter(self, tenant: str, stage: str) -> None:
        n = next(self.numbers)
        self.store.record_dead_letter(
            DeadLetterRow(
                f"dl-{n}",
                tenant,
                stage,
                "InvalidScan",
                "truncated pixel data",
                3,
                "scans.raw",
                0,
                n,
                now_us(),
            )
        )


def _add_accounts(app: Any, a: str, b: str) -> dict[str, str]:
    accounts = app.state.accounts
    keys = {}
    for tenant in (a, b):
        accounts.create_tenant(tenant)
        accounts.create_user(tenant, "viewer", hash_password(PASSWORD), "viewer")
        accounts.create_user(tenant, "scanner", hash_password(PASSWORD), "scanner")
        keys[tenant] = issue_key(accounts, tenant, "scanner-1", "scanner").secret
    return keys


@contextmanager
def running_world(tmp_path: Path) -> Iterator[DashboardWorld]:
    """Start the API with uvicorn on a free loopback port; stop it afterwards."""
    spec = load_pipeline(example_path("eggs")).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}",
        store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )
    settings = ApiSettings(
        pipeline=spec, ingest_topic="scans.raw", jwt_secret=JWT_SECRET, rate_per_s=1e6, burst=10**6
    )
    app = create_app(settings)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio"
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the API server stopped while starting; see the log above")
            time.sleep(0.05)
        suffix = uuid.uuid4().hex[:6]
        a, b = f"hatchery-a-{suffix}", f"hatchery-b-{suffix}"
        keys = _add_accounts(app, a, b)
        yield DashboardWorld(f"http://127.0.0.1:{port}", app.state.store, a, b, keys)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
