"""DICOMweb STOW-RS driven by a real DICOMweb client library (dicomweb-client) against
the API under uvicorn: instances stored and durably on the bus, each refused one listed
with its reason, the standard statuses, and an instance sent twice one envelope id."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pydicom
import pytest
import requests
from api_testing import World, serve_app, start_world
from dicom_builder import make_dataset
from dicomweb_client.api import DICOMwebClient
from flow_testing import drain_topic

from inferstream.admit import source_id
from inferstream.api import ApiSettings
from inferstream.envelope import parse

FAILED, REFERENCED, REASON = "00081198", "00081199", "00081197"


@pytest.fixture
def served(settings: ApiSettings) -> Iterator[tuple[World, str]]:
    worlds = start_world(settings)
    world = next(worlds)
    with serve_app(settings) as port:
        yield world, f"http://127.0.0.1:{port}"
    worlds.close()


def _client(world: World, base: str, role: str = "device") -> DICOMwebClient:
    return DICOMwebClient(f"{base}/dicomweb", headers=world.headers(world.own, role))


def _dataset(seed: int, **overrides: Any) -> pydicom.Dataset:
    """An instance as read from a Part 10 file (the preamble makes the client write one)."""
    ds = make_dataset(rows=64, cols=64, seed=seed, **overrides)
    ds.preamble = bytes(128)
    return ds


def test_a_dicomweb_client_stores_instances_and_hears_which_failed_and_why(
    served: Any,
) -> None:
    world, base = served
    client = _client(world, base)
    good = [_dataset(seed) for seed in range(3)]
    answer = client.store_instances(good)  # 200: every one stored
    stored = [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence]
    assert stored == [ds.SOPInstanceUID for ds in good]
    # Each scan's status, on the host the request named (this client sends no port).
    paths = [urlparse(item.RetrieveURL).path for item in answer.ReferencedSOPSequence]
    assert paths == [f"/v1/scans/{source_id(world.own, 'dicom', ds.SOPInstanceUID)}"
                     for ds in good]  # fmt: skip
    assert "FailedSOPSequence" not in answer
    no_egg = _dataset(50, PatientID=None)  # the flagship contract needs the egg id
    mixed = client.store_instances([_dataset(10), no_egg])  # 202: some stored
    assert [i.ReferencedSOPInstanceUID for i in mixed.ReferencedSOPSequence] == [
        _dataset(10).SOPInstanceUID
    ]
    (failed,) = mixed.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == no_egg.SOPInstanceUID
    assert failed[0x00081197].value == 0xC000 and "PatientID" in failed[0x00000902].value
    client.store_instances(good)  # sent again: the same ids
    envs = [parse(m.value) for m in drain_topic(world.client.app.state.services.bus,  # type: ignore[attr-defined]
                                                "scans.raw", 7)]  # fmt: skip
    assert len(envs) == 7
    uids = [ds.SOPInstanceUID for ds in good] + [_dataset(10).SOPInstanceUID]
    assert {e.id for e in envs} == {source_id(world.own, "dicom", str(u)) for u in uids}
    assert all(e.tenant == world.own for e in envs)


def test_none_stored_is_409_and_a_wrong_body_is_said(served: Any) -> None:
    world, base = served
    client = _client(world, base)
    with pytest.raises(requests.HTTPError) as conflict:
        client.store_instances([_dataset(60, PatientID=None)])
    assert conflict.value.response.status_code == 409
    body = conflict.value.response.json()
    assert body[FAILED]["Value"][0][REASON]["Value"] == [0xC000]
    headers = world.headers(world.own, "device")
    url = f"{base}/dicomweb/studies"
    plain = requests.post(url, data=b"x", headers={**headers, "Content-Type": "application/dicom"},
                          timeout=10)  # fmt: skip
    assert plain.status_code == 415 and "multipart/related" in plain.json()["detail"]
    boundary = "b0undary"
    damaged = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
               + b"not dicom at all" + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    related = {**headers, "Content-Type": f'multipart/related; type="application/dicom"; '
               f"boundary={boundary}"}  # fmt: skip
    answer = requests.post(url, data=damaged, headers=related, timeout=10)
    assert answer.status_code == 409
    assert "not a readable DICOM" in answer.json()[FAILED]["Value"][0]["00000902"]["Value"][0]
    viewer = _client(world, base, role="viewer")
    with pytest.raises(requests.HTTPError) as forbidden:
        viewer.store_instances([_dataset(61)])
    assert forbidden.value.response.status_code == 403


def test_into_one_study_an_instance_of_another_fails(served: Any) -> None:
    world, base = served
    client = _client(world, base)
    ours, theirs = _dataset(70), _dataset(71)
    answer = client.store_instances([ours, theirs], study_instance_uid=ours.StudyInstanceUID)
    (failed,) = answer.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == theirs.SOPInstanceUID
    assert failed[0x00081197].value == 0xC122
    buffer = io.BytesIO()
    ours.save_as(buffer, enforce_file_format=True)
    assert len(answer.ReferencedSOPSequence) == 1
