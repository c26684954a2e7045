"""The API with encryption at rest: scans kept encrypted, served decrypted, and 410 Gone
for every read and upload of a tenant whose keys were shredded."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_testing import World, dicom_bytes, start_world

from inferstream.api import ApiSettings
from inferstream.blob_crypto import CACHE_ENV, data_keys
from inferstream.key_provider import KEK_ENV, key_provider_from_env
from inferstream.store import ResultsStore


@pytest.fixture
def sealed_world(settings: ApiSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(KEK_ENV, base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv(CACHE_ENV, "0")  # a shred from another process is seen at once
    yield from start_world(settings)


def _upload(world: World, tenant: str) -> int:
    headers = {**world.headers(tenant, "device"), "Content-Type": "application/dicom"}
    answer = world.client.post("/v1/scans", content=dicom_bytes(seed=5), headers=headers)
    status: int = answer.status_code
    return status


def test_scans_are_encrypted_at_rest_and_gone_once_the_tenant_is_shredded(
    sealed_world: World, settings: ApiSettings, tmp_path: Path
) -> None:
    world = sealed_world
    headers = {**world.headers(world.own, "device"), "Content-Type": "application/dicom"}
    scan = dicom_bytes(seed=4)
    answer = world.client.post("/v1/scans", content=scan, headers=headers)
    assert answer.status_code == 202, answer.text
    scan_id = answer.json()["ids"][0]
    files = [p for p in (tmp_path / "blobs" / world.own).rglob("*") if p.is_file()]
    assert len(files) == 1 and scan[-2000:] not in files[0].read_bytes()
    viewer = world.headers(world.own, "viewer")
    assert world.client.get(f"/v1/scans/{scan_id}/image", headers=viewer).status_code == 200

    provider = key_provider_from_env()
    assert provider is not None
    with ResultsStore(settings.pipeline.store) as store:  # as `inferstream keys shred` does
        assert data_keys(store, provider).shred(world.own, actor="cli:ops") == 1
    gone = world.client.get(f"/v1/scans/{scan_id}/image", headers=viewer)
    assert gone.status_code == 410 and "were shredded" in gone.json()["detail"]
    assert _upload(world, world.own) == 410
    assert _upload(world, world.other) == 202  # the other tenant is untouched
