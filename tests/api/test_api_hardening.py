"""Regression tests of an outside probe (issue 11): answers that were 500s, resets, a
wrong status or a silent acceptance, each now a precise answer."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from api_testing import World, dicom_bytes, serve_app, start_world

from inferstream.api import ApiSettings
from inferstream.api.ops import MAX_HEADER_BYTES
from inferstream.envelope import EnvelopeBatch, new_envelope

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999"]


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/feedback", '{"subject": "EGG-1", "label": %s}'),
        ("/v1/admin/keys", '{"name": %s, "role": "viewer"}'),
        ("/v1/admin/users", '{"username": "bob", "password": %s, "role": "viewer"}'),
        ("/v1/admin/replay", '{"stage": "classify", "to": %s}'),
    ],
)
def test_non_finite_numbers_in_json_are_a_422_not_a_500(
    world: World, path: str, template: str, number: str
) -> None:
    headers = {**world.headers(world.own, "admin"), "Content-Type": "application/json"}
    answer = world.client.post(path, content=template % number, headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_request"


def test_feedback_with_a_label_no_model_has_is_a_400(world: World) -> None:
    headers = world.headers(world.own, "operator")
    answer = world.client.post(
        "/v1/feedback", json={"subject": "EGG-1", "label": "rooster"}, headers=headers
    )
    assert answer.status_code == 400
    assert "female, male, not_developing" in answer.json()["detail"]
    good = world.client.post(
        "/v1/feedback", json={"subject": "EGG-1", "label": "female"}, headers=headers
    )
    assert good.status_code == 201


@pytest.mark.parametrize("path", ["/v1/admin/users", "/v1/admin/keys"])
def test_405_names_every_method_of_the_path(world: World, path: str) -> None:
    answer = world.client.put(path, headers=world.headers(world.own, "admin"))
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "GET, POST"


def test_the_schema_names_the_pipelines_stages_heads_and_labels(world: World) -> None:
    schemas = world.client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["Replay"]["properties"]["stage"]["enum"] == [
        "classify",
        "store",
        "dead-letters",
        "store-dead-letters",
    ]
    assert schemas["FeedbackIn"]["properties"]["label"]["enum"] == [
        "female",
        "male",
        "not_developing",
    ]
    named, absent = schemas["FeedbackIn"]["properties"]["head"]["anyOf"]
    assert (named["enum"], absent) == (["sex"], {"type": "null"})


def test_feedback_for_a_head_the_application_lacks_is_a_400(world: World) -> None:
    headers = world.headers(world.own, "operator")
    body = {"subject": "EGG-1", "label": "female"}
    answer = world.client.post("/v1/feedback", json={**body, "head": "size"}, headers=headers)
    assert answer.status_code == 400
    assert "eggs's: sex" in answer.json()["detail"]
    named = world.client.post("/v1/feedback", json={**body, "head": "sex"}, headers=headers)
    assert (named.status_code, named.json()["head"]) == (201, "sex")


def test_replay_targets_are_checked_like_the_command_lines(world: World) -> None:
    headers = world.headers(world.own, "admin")

    def replay(to: object) -> int:
        body = {"stage": "classify", "to": to}
        return world.client.post("/v1/admin/replay", json=body, headers=headers).status_code

    assert replay("earliest") == replay(0) == replay("2026-01-01T00:00:00Z") == 202
    assert replay("0001-01-01T00:00:00+00:00") == 202  # before the epoch: from the start
    assert replay("2026-01-01T00:00:00") == 422  # no zone
    assert replay(-1) == replay("yesterday") == 422
    unknown = world.client.post(
        "/v1/admin/replay", json={"stage": "nope", "to": "earliest"}, headers=headers
    )
    assert unknown.status_code == 400 and "nope" in unknown.json()["detail"]


def test_a_tenant_has_a_bounded_number_of_working_keys(settings: ApiSettings) -> None:
    for world in start_world(replace(settings, max_keys=len(("admin",)) + 8)):
        headers = world.headers(world.own, "admin")
        made = [
            world.client.post(
                "/v1/admin/keys", json={"name": f"k{n}", "role": "viewer"}, headers=headers
            )
            for n in range(6)
        ]
        # The world made one key per role (4); the limit is 9, so 5 more fit.
        assert [answer.status_code for answer in made] == [201] * 5 + [409]
        assert "revoke" in made[-1].json()["detail"]
        world.client.delete(f"/v1/admin/keys/{made[0].json()['key_id']}", headers=headers)
        again = world.client.post(
            "/v1/admin/keys", json={"name": "after", "role": "viewer"}, headers=headers
        )
        assert again.status_code == 201


def test_too_many_multipart_parts_is_413(world: World) -> None:
    files = [("files", (f"{n}.dcm", b"x")) for n in range(1001)]
    answer = world.client.post("/v1/scans", files=files, headers=world.headers(world.own, "device"))
    assert answer.status_code == 413, answer.text
    assert "too many parts" in answer.json()["detail"]


def test_an_empty_multipart_field_is_a_400_and_the_schema_says_so(world: World) -> None:
    answer = world.client.post(
        "/v1/scans",
        files=[("files", ("a.dcm", dicom_bytes(seed=40)))],
        data={"tray": ""},
        headers=world.headers(world.own, "device"),
    )
    assert answer.status_code == 400
    body = world.client.get("/openapi.json").json()["paths"]["/v1/scans"]["post"]
    tray = body["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["tray"]
    assert tray["pattern"].startswith("^[A-Za-z0-9]")  # so the schema admits no empty tray


def test_oversized_headers_are_431_through_the_app(world: World) -> None:
    big = {"X-Padding": "a" * (MAX_HEADER_BYTES + 1)}
    answer = world.client.get("/healthz", headers=big)
    assert answer.status_code == 431
    assert world.client.get("/healthz", headers={"X-Padding": "a" * 1000}).status_code == 200


@pytest.fixture
def served(settings: ApiSettings) -> Iterator[int]:
    with serve_app(settings) as port:
        yield port


def test_a_200_kb_header_is_answered_431_not_reset(served: int) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served), timeout=10) as conn:
        conn.sendall(request)
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


# -- a full bus disk ----------------------------------------------------------


def test_scans_refused_for_a_full_bus_are_not_left_queued(
    settings: ApiSettings, small_disk: Path
) -> None:
    spec = settings.pipeline.with_urls(bus=f"sqlite:///{small_disk / 'bus.db'}")
    for world in start_world(replace(settings, pipeline=spec)):
        headers = {**world.headers(world.own, "device"), "Content-Type": "application/x-protobuf"}
        accepted: list[str] = []
        refused: list[str] = []
        for number in range(200):
            batch = EnvelopeBatch()
            for n in range(20):
                ident = f"full-{number:03d}-{n:02d}"
                batch.envelopes.append(
                    new_envelope(dicom_bytes(seed=n), "application/dicom", envelope_id=ident)
                )
            body = batch.SerializeToString()
            answer = world.client.post("/v1/scans", content=body, headers=headers)
            ids = [env.id for env in batch.envelopes]
            assert answer.status_code in (202, 503), answer.text
            (accepted if answer.status_code == 202 else refused).extend(ids)
            if answer.status_code == 503:
                assert "Retry-After" in answer.headers
                break
        assert accepted and refused, "the 4 MB bus never filled"
        viewer = world.headers(world.own, "viewer")
        for ident in refused:
            assert world.client.get(f"/v1/scans/{ident}", headers=viewer).status_code == 404
        for ident in accepted:
            status = world.client.get(f"/v1/scans/{ident}", headers=viewer)
            assert status.json()["status"] == "queued"
