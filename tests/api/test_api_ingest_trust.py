"""Every ingest path derives what it stores from the scan itself; nothing a client claims
crosses a tenant. Regression tests of an outside probe (issue 11, finding 1)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from api_testing import World, dicom_bytes

from inferstream.envelope import Envelope, EnvelopeBatch, Prediction, new_envelope, now_us


def post_batch(world: World, *envelopes: Envelope, tenant: str | None = None) -> object:
    batch = EnvelopeBatch()
    batch.envelopes.extend(envelopes)
    headers = {
        **world.headers(tenant or world.own, "device"),
        "Content-Type": "application/x-protobuf",
    }
    return world.client.post("/v1/scans", content=batch.SerializeToString(), headers=headers)


def read_bus(world: World) -> list[Envelope]:
    bus = world.client.app.state.services.bus  # type: ignore[attr-defined]
    consumer = bus.consumer("trust-check", ["scans.raw"])
    try:
        return [Envelope.FromString(m.value) for m in consumer.poll_batch(100, 0.5)]
    finally:
        consumer.close()


def png() -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((24, 32), 128, np.uint8))
    assert ok
    return bytes(encoded)


def test_a_client_cannot_name_another_tenants_blob(world: World) -> None:
    """The probe: tenant A claimed the digest of tenant B's scan, then read its image."""
    upload = world.client.post(
        "/v1/scans",
        content=dicom_bytes(seed=31),
        headers={**world.headers(world.other, "device"), "Content-Type": "application/dicom"},
    )
    assert upload.status_code == 202
    (their_scan,) = upload.json()["ids"]
    their_digest = world.client.get(
        f"/v1/scans/{their_scan}", headers=world.headers(world.other, "viewer")
    )
    assert their_digest.status_code == 200
    accounts = world.client.app.state.services.accounts  # type: ignore[attr-defined]
    digest = accounts.find_scan(world.other, their_scan).blob_sha256

    forged = new_envelope(b"not an image at all", "image/png", envelope_id="forged-1")
    forged.attributes["blob_sha256"] = digest
    answer = post_batch(world, forged)
    assert answer.status_code == 400, answer.text  # type: ignore[attr-defined]
    assert "blob_sha256" in answer.json()["detail"]  # type: ignore[attr-defined]
    mine = world.client.get("/v1/scans/forged-1/image", headers=world.headers(world.own, "viewer"))
    assert mine.status_code == 404
    assert [env.id for env in read_bus(world)] == [their_scan]  # the forgery never got on


def test_the_same_bytes_in_two_tenants_are_two_blobs(world: World) -> None:
    """Content addressing never makes one tenant's upload readable through another's."""
    data = dicom_bytes(seed=32)
    ids = {}
    for tenant in world.tenants:
        answer = world.client.post(
            "/v1/scans",
            content=data,
            headers={**world.headers(tenant, "device"), "Content-Type": "application/dicom"},
        )
        assert answer.status_code == 202
        ids[tenant] = answer.json()["ids"][0]
    blobs = world.client.app.state.services.blobs  # type: ignore[attr-defined]
    stored = sorted(path.relative_to(blobs.root).parts[0] for path in blobs.root.rglob("*/*/*"))
    assert stored == sorted(world.tenants)
    own_image = f"/v1/scans/{ids[world.own]}/image"
    assert (
        world.client.get(own_image, headers=world.headers(world.own, "viewer")).status_code == 200
    )
    assert world.client.get(
        own_image, headers=world.headers(world.other, "viewer")
    ).status_code == (404)


def test_a_non_image_payload_is_refused_on_the_protobuf_path(world: World) -> None:
    answer = post_batch(world, new_envelope(b"#!/bin/sh\nrm -rf /\n", "application/dicom"))
    assert answer.status_code == 415, answer.text  # type: ignore[attr-defined]
    assert read_bus(world) == []


def test_protobuf_dicom_gets_its_preamble_blanked_like_an_upload(world: World) -> None:
    data = dicom_bytes(seed=33, preamble=b"MZ\x90\x00" + b"\xcc" * 60)
    answer = post_batch(world, new_envelope(data, "application/dicom"))
    assert answer.status_code == 202, answer.text  # type: ignore[attr-defined]
    (env,) = read_bus(world)
    assert env.payload.inline[:128] == bytes(128)
    assert env.payload.inline[128:] == data[128:]


def test_content_type_and_scan_attributes_are_derived_not_taken(world: World) -> None:
    env = new_envelope(dicom_bytes(seed=34), "image/png", envelope_id="derived-1")
    env.attributes["tray"] = "CLIENT-TRAY"
    answer = post_batch(world, env)
    assert answer.status_code == 202, answer.text  # type: ignore[attr-defined]
    (sent,) = read_bus(world)
    assert sent.payload.content_type == "application/dicom"
    assert sent.attributes["tray"] == "TRAY-0042"  # the scan's own tray wins
    assert len(sent.attributes["blob_sha256"]) == 64
    status = world.client.get("/v1/scans/derived-1", headers=world.headers(world.own, "viewer"))
    assert status.json()["content_type"] == "application/dicom"


def test_a_client_field_applies_where_the_scan_has_none(images_world: World) -> None:
    world = images_world
    env = new_envelope(png(), "image/png")
    env.attributes["scanner"] = "SCANNER-07"
    assert post_batch(world, env).status_code == 202  # type: ignore[attr-defined]
    (sent,) = read_bus(world)
    assert sent.attributes["scanner"] == "SCANNER-07"
    assert (sent.attributes["width"], sent.attributes["height"]) == ("32", "24")


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("egg_id", "EGG-1"), ("width", "99999"), ("blob_sha256", "0" * 64), ("modality", "CT")],
)
def test_attributes_read_from_the_scan_cannot_be_sent(
    images_world: World, attribute: str, value: str
) -> None:
    world = images_world
    env = new_envelope(png(), "image/png")
    env.attributes[attribute] = value
    answer = post_batch(world, env)
    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert attribute in answer.json()["detail"]  # type: ignore[attr-defined]


def test_client_values_are_validated(images_world: World) -> None:
    world = images_world
    for field, value in [("id", "../../x"), ("source", "a b"), ("trace_id", "x" * 65)]:
        env = new_envelope(png(), "image/png")
        setattr(env, field, value)
        answer = post_batch(world, env)
        assert answer.status_code == 400, (field, answer.text)  # type: ignore[attr-defined]
    env = new_envelope(png(), "image/png")
    env.attributes["tray"] = "=HYPERLINK()"
    assert post_batch(world, env).status_code == 400  # type: ignore[attr-defined]
    future = new_envelope(png(), "image/png", created_at_us=2**62)
    assert post_batch(world, future).status_code == 400  # type: ignore[attr-defined]


def test_a_creation_time_ahead_of_the_centres_clock_is_refused_naming_the_skew(
    images_world: World,
) -> None:
    """An edge agent whose clock stepped an hour ahead would hold every window an hour
    ahead (docs/dataflow.md); one an hour behind sends a backlog, which is fine."""
    hour_us = 3600 * 1_000_000
    ahead = new_envelope(png(), "image/png", created_at_us=now_us() + hour_us)
    answer = post_batch(images_world, ahead)
    assert answer.status_code == 400  # type: ignore[attr-defined]
    detail = answer.json()["detail"]  # type: ignore[attr-defined]
    assert "s ahead of this host's clock, more than the 60 s allowed" in detail
    assert "max_clock_skew_s" in detail and "Set it right (NTP)" in detail
    for offset_us in (-hour_us, 30 * 1_000_000):  # behind, or ahead within the skew
        env = new_envelope(png(), "image/png", created_at_us=now_us() + offset_us)
        assert post_batch(images_world, env).status_code == 202  # type: ignore[attr-defined]


def test_predictions_and_errors_cannot_be_injected(images_world: World) -> None:
    world = images_world
    env = new_envelope(png(), "image/png")
    env.predictions.append(Prediction(model_name="egg_sexing", label="female"))
    answer = post_batch(world, env)
    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "predictions" in answer.json()["detail"]  # type: ignore[attr-defined]
    env = new_envelope(png(), "image/png")
    env.error.message = "pretend a stage gave up"
    assert post_batch(world, env).status_code == 400  # type: ignore[attr-defined]


def test_a_client_id_is_scoped_to_the_callers_tenant(world: World) -> None:
    for tenant in world.tenants:
        env = new_envelope(dicom_bytes(seed=35), "application/dicom", envelope_id="edge-0001")
        answer = post_batch(world, env, tenant=tenant)
        assert answer.json()["ids"] == ["edge-0001"]  # type: ignore[attr-defined]
    sent = read_bus(world)
    assert sorted(env.tenant for env in sent) == sorted(world.tenants)
    for tenant in world.tenants:
        status = world.client.get("/v1/scans/edge-0001", headers=world.headers(tenant, "viewer"))
        assert status.status_code == 200
