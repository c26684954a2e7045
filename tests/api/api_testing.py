"""Helpers shared by the API tests: DICOM scans, an API world with tenants and keys."""

from __future__ import annotations

import io
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from inferstream.api import ApiSettings, create_app
from inferstream.api.permissions import ROLES

JWT_SECRET = "test-secret-" + "0123456789abcdef" * 3


def dicom_bytes(seed: int = 0, preamble: bytes = b"", **overrides: Any) -> bytes:
    """An MR slice as the flagship contract describes it (64x64 keeps tests light)."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed)])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study{seed}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series{seed}"])
    ds.Modality = "MR"
    ds.Manufacturer = "inferstream-sim"
    ds.AccessionNumber = "TRAY-0042"
    ds.StationName = "SCANNER-03"
    ds.AcquisitionDateTime = "20261122014944.123456"
    ds.PatientName = f"EGG^EGG-{seed:06d}"
    ds.PatientID = f"EGG-{seed:06d}"
    ds.ClinicalTrialTimePointID = "12"
    ds.MagneticFieldStrength = 9.4
    ds.RepetitionTime = 500.0
    ds.EchoTime = 12.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 64, 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = rng.integers(0, 65536, (64, 64), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in overrides.items():
            setattr(ds, keyword, value)
        if preamble:
            ds.preamble = preamble.ljust(128, b"\x00")
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class World:
    """A running API with two tenants and one API key per role in each."""

    client: TestClient
    tenants: tuple[str, str]
    keys: dict[tuple[str, str], str] = field(default_factory=dict)

    def headers(self, tenant: str, role: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[(tenant, role)]}

    @property
    def own(self) -> str:
        return self.tenants[0]

    @property
    def other(self) -> str:
        return self.tenants[1]


def add_keys(world: World, accounts: Any) -> None:
    from inferstream.api.auth import issue_key

    for tenant in world.tenants:
        accounts.create_tenant(tenant)
        for role in ROLES:
            world.keys[(tenant, role)] = issue_key(accounts, tenant, f"{role} key", role).secret


def start_world(settings: ApiSettings) -> Iterator[World]:
    suffix = uuid.uuid4().hex[:6]
    with TestClient(create_app(settings)) as client:
        world = World(client, (f"acme-{suffix}", f"globex-{suffix}"))
        add_keys(world, client.app.state.accounts)  # type: ignore[attr-defined]
        yield world
