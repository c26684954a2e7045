"""The imageops routes: a job is checked whole before anything is queued (400 naming the
field and the operation's position, 415, 413), reads are scoped to the tenant (404),
and roles are enforced (401, 403)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imageops_world import JOBS, USERS_FORM, World, imageops_spec, running_api

from inferstream.apps.imageops.client import multipart
from inferstream.apps.imageops.images import encoded
from inferstream.bus import open_bus


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    spec = imageops_spec(tmp_path_factory.mktemp("imageops-api"))
    with running_api(spec) as started:
        yield started


def queued(world: World) -> int:
    """Messages on the ingest topic so far."""
    bus = open_bus(world.spec.bus)
    try:
        return sum(p.high for p in bus.partitions(next(iter(world.spec.topics))))
    finally:
        bus.close()


def blobs_of(world: World) -> set[Path]:
    folder = Path(world.spec.blobs.removeprefix("file://")) / world.own
    return set(folder.rglob("*")) if folder.exists() else set()


SMALL = encoded(512, 512, 1)
BIG = encoded(1024, 1024, 2, "jpg")
ODD = encoded(333, 517, 3, "webp")


def test_a_job_is_accepted_with_its_files_and_outputs(world: World) -> None:
    answer = world.submit([("a.png", SMALL), ("b.jpg", BIG), ("c.webp", ODD)])
    assert answer.status_code == 202, answer.text
    body = answer.json()
    job = body["job"]
    assert answer.headers["location"] == body["status_url"] == f"{JOBS}/{job}"
    assert [(f["id"], f["name"], f["width"], f["height"], f["outputs"]) for f in body["files"]] == [
        (f"{job}.0", "a.png", 512, 512, 4),
        (f"{job}.1", "b.jpg", 1024, 1024, 4),
        (f"{job}.2", "c.webp", 333, 517, 4),
    ]
    assert body["outputs"] == 12
    assert body["actions"] == {
        "operations": [["resize", "200x300"], ["split", "2x2"], ["blur", "gaussian", 1]],
        "output": "jpg",
    }
    # The file is an ingested scan of the tenant too: its status and its image.
    scan = world.client.get(f"/v1/scans/{job}.1", headers=world.headers("viewer")).json()
    assert scan["status"] == "queued" and scan["subject"] == "b.jpg" and scan["group"] == job


def test_file_names_are_kept_without_folders_or_control_characters(world: World) -> None:
    files = [("../../etc/x\x07.png", SMALL), ("C:\\photos\\y.png", SMALL)]
    body, content_type = multipart({"actions": json.dumps(USERS_FORM)}, files)
    headers = {**world.headers(), "Content-Type": content_type}
    answer = world.client.post(JOBS, content=body, headers=headers)
    names = [f["name"] for f in answer.json()["files"]]
    assert names == ["x.png", "y.png"]


@pytest.mark.parametrize(
    ("actions", "says"),
    [
        ({"operations": [["resize", "10x10"], ["blur", "gaussian"], ["sharpen", 1]]},
         "actions.operations[2]: unknown operation 'sharpen'; use resize, split, blur"),
        ({"operations": [["resize", "200*300"]]}, "actions.operations[0]: resize size '200*300' "
         "is malformed"),
        ({"operations": [["blur", "box"]]}, "actions.operations[0]: blur 'box' is unknown"),
        ({"operations": [["blur", "gaussian"]], "output": "gif"},
         "actions.output: 'gif' is not supported; use jpg, png, webp"),
        ({"operations": [["split", "40x40"]]}, "actions.operations[0]: split grid '40x40' is "
         "too large"),
        ("{\"operations\": [", "actions: not valid JSON"),
        ({"operations": []}, "actions.operations: must be a list of 1 to 32"),
    ],
)  # fmt: skip
def test_a_bad_actions_document_is_a_400_naming_field_and_position(
    world: World, actions: Any, says: str
) -> None:
    before, blobs = queued(world), blobs_of(world)
    answer = world.submit([("a.png", SMALL)], actions)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "bad_request"
    assert says in answer.json()["detail"]
    assert queued(world) == before and blobs_of(world) == blobs  # nothing queued or kept


def test_a_resize_larger_than_an_image_names_the_file_and_the_operation(world: World) -> None:
    before, blobs = queued(world), blobs_of(world)
    actions = {"operations": [["blur", "median"], ["resize", "600x600"]]}
    answer = world.submit([("big.jpg", BIG), ("small.png", SMALL)], actions)
    assert answer.status_code == 400
    assert answer.json()["detail"] == (
        "files[1] 'small.png' is 512x512: actions.operations[1]: resize to 600x600 is larger "
        "than the image there (512x512); a resize may go to any size up to that, not above"
    )
    assert queued(world) == before and blobs_of(world) == blobs  # not even the good file


def test_a_non_image_is_a_415_naming_the_file(world: World) -> None:
    before = queued(world)
    answer = world.submit([("a.png", SMALL), ("notes.txt", b"hello, this is text" * 10)])
    assert answer.status_code == 415
    detail = answer.json()["detail"]
    assert detail.startswith("files[1] 'notes.txt': file is none of the known kinds"), detail
    gif = world.submit([("x.gif", b"GIF89a" + b"\0" * 64)])
    assert gif.status_code == 415 and "files[0] 'x.gif'" in gif.json()["detail"]
    assert queued(world) == before


def test_an_image_kind_the_application_does_not_take_is_a_415(world: World) -> None:
    import numpy as np

    buffer = __import__("io").BytesIO()
    np.save(buffer, np.zeros((4, 4), np.uint8))
    answer = world.submit([("a.npy", buffer.getvalue())])
    assert answer.status_code == 415
    assert (
        "files[0] 'a.npy': this application does not take application/x-npy"
        in (answer.json()["detail"])
    )


def test_a_corrupt_image_is_a_400_naming_the_file(world: World) -> None:
    answer = world.submit([("ok.png", SMALL), ("torn.png", SMALL[: len(SMALL) // 2])])
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("files[1] 'torn.png': PNG is truncated or corrupt")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({}, "actions: send exactly one actions field"),
        ({"actions": [json.dumps(USERS_FORM)] * 2}, "actions: send exactly one actions field"),
        ({"actions": json.dumps(USERS_FORM), "tray": "T1"}, "tray: no such field"),
    ],
)
def test_form_fields_are_checked(world: World, data: dict[str, Any], says: str) -> None:
    answer = world.client.post(JOBS, files=[("files", ("a.png", SMALL))], data=data,
                               headers=world.headers())  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith(says)


def test_files_must_be_sent_as_files(world: World) -> None:
    form = {"actions": json.dumps(USERS_FORM)}
    stray = world.client.post(
        JOBS, files=[("image", ("a.png", SMALL))], data=form, headers=world.headers()
    )
    assert stray.status_code == 400 and stray.json()["detail"].startswith("image: attach every")
    body, content_type = multipart({"actions": json.dumps(USERS_FORM)}, [])
    none = world.client.post(JOBS, content=body,
                             headers={**world.headers(), "Content-Type": content_type})  # fmt: skip
    assert none.status_code == 400 and none.json()["detail"].startswith("files: no images")


def test_a_body_that_is_not_multipart_is_a_415(world: World) -> None:
    answer = world.client.post(JOBS, json=USERS_FORM, headers=world.headers())
    assert answer.status_code == 415


def test_too_many_files_or_outputs_is_a_413(world: World) -> None:
    tiny = encoded(16, 16)
    many = world.submit(
        [(f"{i}.png", tiny) for i in range(65)], {"operations": [["blur", "median"]]}
    )
    assert many.status_code == 413 and "at most 64 files" in many.json()["detail"]
    split = {"operations": [["split", "16x16"]]}
    outputs = world.submit([(f"{i}.png", SMALL) for i in range(17)], split)
    assert outputs.status_code == 413
    assert "the job makes 4352 outputs, over the limit of 4096" in outputs.json()["detail"]


def test_a_body_over_the_limit_is_a_413(tmp_path: Path) -> None:
    with running_api(imageops_spec(tmp_path), max_body_bytes=100_000) as small:
        answer = small.submit([("big.jpg", BIG)])
    assert answer.status_code == 413 and answer.json()["error"] == "payload_too_large"


def test_an_image_over_the_pixel_limit_is_a_400_naming_it(tmp_path: Path) -> None:
    with running_api(imageops_spec(tmp_path), max_image_side=800) as small:
        answer = small.submit([("small.png", SMALL), ("big.jpg", BIG)])
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("files[1] 'big.jpg': image declares 1024x1024")


def test_unknown_jobs_and_outputs_are_404(world: World) -> None:
    job = world.submit([("a.png", SMALL)]).json()["job"]
    viewer = world.headers("viewer")
    for path in (f"{JOBS}/{'0' * 32}", f"{JOBS}/not-a-job", f"{JOBS}/{job}/outputs/0-a-0.jpg",
                 f"{JOBS}/{job}/outputs/..%2Fx", f"{JOBS}/nope/outputs/0-a-0.jpg"):  # fmt: skip
        answer = world.client.get(path, headers=viewer)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["error"] in ("not_found", "http_error")
    other = world.client.get(f"{JOBS}/{job}", headers=world.headers("viewer", world.other))
    assert other.status_code == 404  # another tenant's job is not found, never forbidden
    assert world.client.get(f"{JOBS}/{job}", headers=viewer).status_code == 200


def test_roles(world: World) -> None:
    assert world.submit([("a.png", SMALL)], headers=world.headers("viewer")).status_code == 403
    for role in ("admin", "operator", "device"):
        assert world.submit([("a.png", SMALL)], headers=world.headers(role)).status_code == 202
    job = world.submit([("a.png", SMALL)]).json()["job"]
    for role in ("admin", "operator", "viewer", "device"):
        assert world.client.get(f"{JOBS}/{job}", headers=world.headers(role)).status_code == 200
    anonymous = world.client.post(JOBS, files=[("files", ("a.png", SMALL))],
                                  data={"actions": json.dumps(USERS_FORM)})  # fmt: skip
    assert anonymous.status_code == 401
    assert world.client.get(f"{JOBS}/{job}").status_code == 401


def test_the_routes_are_in_the_openapi_document(world: World) -> None:
    paths = world.client.get("/openapi.json").json()["paths"]
    assert {f"{JOBS}", f"{JOBS}/{{job}}", f"{JOBS}/{{job}}/outputs/{{name}}"} <= set(paths)
    body = paths[JOBS]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["files", "actions"]
