"""Each class of bad input gets a precise 4xx with a reason, never a 500."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from api_testing import World, dicom_bytes, start_world

from inferstream.api import ApiSettings
from inferstream.envelope import Envelope, EnvelopeBatch, new_envelope


def post(world: World, content: bytes, content_type: str, role: str = "device") -> object:
    headers = {**world.headers(world.own, role), "Content-Type": content_type}
    return world.client.post("/v1/scans", content=content, headers=headers)


def upload(world: World, files: list[tuple[str, bytes]], **fields: str) -> object:
    return world.client.post(
        "/v1/scans",
        files=[("files", (name, data)) for name, data in files],
        data=fields,
        headers=world.headers(world.own, "device"),
    )


def png(width: int = 32, height: int = 24) -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((height, width), 128, np.uint8))
    assert ok
    return bytes(encoded)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a huge image (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 1000)
    chunk += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(idat))
    return b"\x89PNG\r\n\x1a\n" + chunk


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_good_multipart_of_every_kind_is_accepted(images_world: World) -> None:
    world = images_world
    ok, jpeg = cv2.imencode(".jpg", np.full((20, 30, 3), 90, np.uint8))
    assert ok
    files = [
        ("a.dcm", dicom_bytes(seed=2)),
        ("b.png", png()),
        ("c.jpg", bytes(jpeg)),
        ("d.npy", npy(np.zeros((16, 16), np.uint16))),
    ]
    answer = upload(world, files, tray="TRAY-7")
    assert answer.status_code == 202, answer.text  # type: ignore[attr-defined]
    assert len(answer.json()["ids"]) == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("truncated.png", png()[:-30], "truncated or corrupt"),
        ("corrupt.png", png()[:40] + b"\x00" * 40, "truncated or corrupt"),
        ("bomb.png", png_header_only(100_000, 100_000), "decompression bomb"),
        ("wide.png", png_header_only(5000, 10), "over the limit"),
        ("truncated.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "no start-of-frame"),
        ("pickle.npy", npy(np.array([{"a": 1}], dtype=object)), "never objects"),
        ("cut.npy", npy(np.zeros((16, 16), np.uint16))[:-10], "truncated or corrupt"),
        ("truncated.dcm", dicom_bytes(seed=3)[:-500], "DICOM"),
    ],
)
def test_bad_file_is_a_400_with_the_reason(
    images_world: World, name: str, data: bytes, reason: str
) -> None:
    world = images_world
    answer = upload(world, [(name, data)])
    assert answer.status_code == 400, answer.text  # type: ignore[attr-defined]
    body = answer.json()  # type: ignore[attr-defined]
    assert body["error"] == "bad_request" and reason in body["detail"]


def test_an_application_takes_only_its_content_types(world: World) -> None:
    answer = upload(world, [("b.png", png())])
    assert answer.status_code == 415  # type: ignore[attr-defined]
    assert "application/dicom" in answer.json()["detail"]  # type: ignore[attr-defined]


def test_a_batch_answers_per_file_which_were_accepted_and_why_others_were_not(
    world: World,
) -> None:
    answer: Any = upload(world, [
        ("a.dcm", dicom_bytes(seed=1)), ("cut.dcm", dicom_bytes(seed=3)[:-500]),
        ("b.png", png()), ("c.dcm", dicom_bytes(seed=2)),
    ])  # fmt: skip
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert len(body["ids"]) == 2  # a.dcm and c.dcm are queued
    refused = [(r["file"], r["name"], r["status"]) for r in body["refused"]]
    assert refused == [(1, "cut.dcm", 400), (2, "b.png", 415)]
    assert "DICOM scan rejected" in body["refused"][0]["detail"]
    assert "application/dicom" in body["refused"][1]["detail"]  # what it takes instead
    for ident in body["ids"]:  # the accepted ones are really queued
        status = world.client.get(f"/v1/scans/{ident}", headers=world.headers(world.own, "viewer"))
        assert status.status_code == 200
    none: Any = upload(world, [("x.dcm", b"nope"), ("y.png", png())])
    assert none.status_code == 415  # neither is a kind this application takes
    detail = none.json()["detail"]
    assert (
        detail.startswith("no file accepted: files[0] 'x.dcm': ") and "files[1] 'y.png'" in detail
    )


def test_a_scan_smaller_than_the_model_takes_is_refused_at_ingest(world: World) -> None:
    """20x20 passes the DICOM contract (16 at least) but not the model (32): a 400 now,
    not a dead letter later."""
    from dicom_builder import make_dataset, to_bytes

    small = make_dataset(20, 20, 5, AccessionNumber="TRAY-0042", ClinicalTrialTimePointID="12")
    answer: Any = upload(world, [("small.dcm", to_bytes(small))])
    assert answer.status_code == 400
    assert "smaller than 32x32" in answer.json()["detail"]


def test_a_truncated_scan_is_refused_with_the_eggs_decoders_reason(world: World) -> None:
    answer = upload(world, [("cut.dcm", dicom_bytes(seed=3)[:-500])])
    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "DICOM scan rejected" in answer.json()["detail"]  # type: ignore[attr-defined]


def test_a_field_the_application_does_not_declare_is_a_400(world: World) -> None:
    answer = upload(world, [("a.dcm", dicom_bytes(seed=2))], egg_colour="brown")
    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "egg_colour" in answer.json()["detail"]  # type: ignore[attr-defined]


def test_dicom_with_executable_preamble_is_accepted_with_preamble_blanked(world: World) -> None:
    data = dicom_bytes(seed=4, preamble=b"MZ\x90\x00" + b"\xcc" * 60)
    answer = post(world, data, "application/dicom")
    assert answer.status_code == 202, answer.text  # type: ignore[attr-defined]
    bus = world.client.app.state.services.bus  # type: ignore[attr-defined]
    consumer = bus.consumer("preamble-check", ["scans.raw"])
    try:
        (message,) = consumer.poll_batch(10, 0.5)
    finally:
        consumer.close()
    env = Envelope.FromString(message.value)
    assert env.payload.inline[:128] == bytes(128)
    assert env.payload.inline[128:] == data[128:]


def test_path_like_uid_is_a_400(world: World) -> None:
    data = dicom_bytes(seed=5, SOPInstanceUID="../../etc/passwd")
    answer = post(world, data, "application/dicom")
    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "SOPInstanceUID" in answer.json()["detail"]  # type: ignore[attr-defined]


def test_path_like_egg_id_is_a_400(world: World) -> None:
    answer = post(world, dicom_bytes(seed=6, PatientID="../x"), "application/dicom")
    assert answer.status_code == 400  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\xff\xff\xff\xff\x0f",  # a length far past the end
        b"\xff" * 64,  # not protobuf at all
        b"\x0b" * 5000 + b"\x0c" * 5000,  # 5000 nested groups (recursion)
        b"\x0a\x80\x01" + b"\x0a\x7e" * 10,  # envelope whose fields are garbage
    ],
)
def test_malformed_or_deeply_nested_protobuf_is_a_400(world: World, body: bytes) -> None:
    answer = post(world, body, "application/x-protobuf")
    assert answer.status_code == 400, answer.text  # type: ignore[attr-defined]
    assert answer.json()["error"] == "bad_request"  # type: ignore[attr-defined]


def test_protobuf_batch_is_forced_into_the_callers_tenant(world: World) -> None:
    batch = EnvelopeBatch()
    batch.envelopes.append(
        new_envelope(dicom_bytes(seed=8), "application/dicom", tenant=world.other)
    )
    answer = post(world, batch.SerializeToString(), "application/x-protobuf")
    assert answer.status_code == 202, answer.text  # type: ignore[attr-defined]
    (scan_id,) = answer.json()["ids"]  # type: ignore[attr-defined]
    mine = world.client.get(f"/v1/scans/{scan_id}", headers=world.headers(world.own, "viewer"))
    theirs = world.client.get(f"/v1/scans/{scan_id}", headers=world.headers(world.other, "viewer"))
    assert (mine.status_code, theirs.status_code) == (200, 404)


def test_protobuf_batch_with_a_non_scan_is_refused(world: World) -> None:
    batch = EnvelopeBatch()
    batch.envelopes.append(new_envelope(b"not a scan", "application/dicom"))
    answer = post(world, batch.SerializeToString(), "application/x-protobuf")
    assert answer.status_code == 415  # type: ignore[attr-defined]


def test_wrong_content_type_is_415(world: World) -> None:
    answer = post(world, b'{"a": 1}', "application/json")
    assert answer.status_code == 415  # type: ignore[attr-defined]
    answer = upload(world, [("x.txt", b"hello world, not an image")])
    assert answer.status_code == 415  # type: ignore[attr-defined]


@pytest.fixture
def small_world(settings: ApiSettings) -> Iterator[World]:
    from dataclasses import replace

    yield from start_world(replace(settings, max_body_bytes=5_000, rate_per_s=0.01, burst=3))


def test_oversized_body_is_413_by_header_and_by_stream(small_world: World) -> None:
    answer = post(small_world, dicom_bytes(seed=9), "application/dicom")
    assert answer.status_code == 413  # type: ignore[attr-defined]
    assert "over the limit of 5000 bytes" in answer.json()["detail"]  # type: ignore[attr-defined]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield from [b"\x00" * 4096] * 4

    headers = {
        **small_world.headers(small_world.own, "device"),
        "Content-Type": "application/dicom",
    }
    streamed = small_world.client.post("/v1/scans", content=chunks(), headers=headers)
    assert streamed.status_code == 413


def test_rate_limit_is_429_with_retry_after(small_world: World) -> None:
    headers = small_world.headers(small_world.own, "viewer")
    codes = [small_world.client.get("/v1/whoami", headers=headers).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = small_world.client.get("/v1/whoami", headers=headers)
    assert int(limited.headers["Retry-After"]) >= 1
    # Another credential has its own bucket.
    other = small_world.client.get(
        "/v1/whoami", headers=small_world.headers(small_world.own, "admin")
    )
    assert other.status_code == 200


def test_login_attempts_are_rate_limited_per_username(small_world: World) -> None:
    form = {"username": f"{small_world.own}/nobody", "password": "wrong password!"}
    codes = [small_world.client.post("/auth/token", data=form).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]


def test_readyz_is_503_when_the_bus_is_gone(world: World) -> None:
    world.client.app.state.services.bus.close()  # type: ignore[attr-defined]
    answer = world.client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["error"] == "unavailable"
