"""imageops end to end on both buses: jobs in over the API, workers through the bus,
every output checked by id against the operations asked (0 lost, 0 doubled), fetched
over its download link, and equal to the same plan applied here."""

from __future__ import annotations

import json
import threading
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from imageops_world import (
    JOBS,
    USERS_FORM,
    World,
    imageops_spec,
    running_api,
    wait_done,
    wait_for,
)

from inferstream.apps.imageops.images import encoded
from inferstream.apps.imageops.operations import decode, parse_document, run_plan
from inferstream.envelope import derive_id
from inferstream.store import ResultFilter
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow

#: The same three file names in every job: 512x512, 1024x1024 and an odd size.
NAMES = (("a.png", 512, 512, "png"), ("b.jpg", 1024, 1024, "jpg"), ("c.png", 333, 517, "png"))
RICHER = {
    "operations": [["split", "2x3"], ["blur", "median", 2], ["resize", "80x60"],
                   ["blur", "bilateral"]],
    "output": "webp",
}  # fmt: skip


def files(seed: int) -> list[tuple[str, bytes]]:
    return [(name, encoded(w, h, seed * 7 + i, kind)) for i, (name, w, h, kind) in enumerate(NAMES)]


def test_concurrent_jobs_with_the_same_file_names_never_meet(tmp_path: Path, bus_url: str) -> None:
    spec = imageops_spec(tmp_path, bus_url)
    jobs = {0: USERS_FORM, 1: USERS_FORM, 2: RICHER}  # two identical plans, other images
    sent = {seed: files(seed) for seed in jobs}
    with running_api(spec) as world, pipeline_threads(spec, replicas=1):
        accepted = _submit_concurrently(world, jobs, sent)
        assert len({answer["job"] for answer in accepted.values()}) == len(jobs)
        for seed, answer in accepted.items():
            status = wait_done(world, answer["job"])
            assert status["status"] == "done", status
            _check_job(world, answer, status, jobs[seed], sent[seed])
        assert world.services.store.count_results(world.other) == 0


def _submit_concurrently(
    world: World, jobs: dict[int, Any], sent: dict[int, list[tuple[str, bytes]]]
) -> dict[int, Any]:
    answers: dict[int, Any] = {}

    def submit(seed: int) -> None:
        answer = world.submit(sent[seed], jobs[seed])
        assert answer.status_code == 202, answer.text
        answers[seed] = answer.json()

    threads = [threading.Thread(target=submit, args=(seed,)) for seed in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def _check_job(
    world: World, answer: Any, status: Any, actions: Any, sent: list[tuple[str, bytes]]
) -> None:
    """Every output of the job by id: the ids its files must make, their sizes, format,
    bytes (downloaded) and pixels, against the plan applied here."""
    job, plan = answer["job"], parse_document(actions)
    assert [f["id"] for f in answer["files"]] == [f"{job}.{i}" for i in range(len(NAMES))]
    records = _records(world, job)
    expected: dict[str, tuple[int, int, bytes]] = {}
    for (name, w, h, _), file in zip(NAMES, answer["files"], strict=True):
        assert (file["name"], file["width"], file["height"]) == (name, w, h)
        outputs = run_plan(sent[file["index"]][1], plan)
        assert file["outputs"] == len(outputs) == len(plan.output_sizes(w, h))
        for tile, data in enumerate(outputs):
            expected[derive_id(file["id"], "apply", tile)] = (file["index"], tile, data)
    assert sorted(records) == sorted(expected)  # 0 lost, 0 doubled, nothing else
    assert len(records) == answer["outputs"]
    served = {o["id"]: o for f in status["files"] for o in f["outputs"]}
    assert served.keys() == expected.keys()  # a download link for every output
    for record_id, (index, tile, data) in expected.items():
        _check_output(world, records[record_id], served[record_id], plan, (index, tile, data))


def _check_output(
    world: World, record: Any, link: Any, plan: Any, expected: tuple[int, int, bytes]
) -> None:
    index, tile, data = expected
    a = record.attributes
    width, height = decode(data).shape[1::-1]
    assert (a["file_index"], a["tile"], a["width"], a["height"]) == (index, tile, width, height)
    assert a["format"] == link["format"] == plan.output
    assert a["output"] == link["name"] and link["name"].startswith(f"{index}-")
    assert a["blob_path"] == f"{record.tenant}/{a['sha256'][:2]}/{a['sha256']}"
    fetched = world.client.get(link["url"], headers=world.headers("device"))
    assert fetched.status_code == 200, fetched.text
    assert fetched.headers["content-type"] == plan.content_type
    # The service made exactly what the plan makes here, byte for byte.
    assert sha256(fetched.content).hexdigest() == a["sha256"] == sha256(data).hexdigest()
    assert json.loads(a["actions"]) == plan.document()


def test_the_blur_changes_the_pixels_of_every_output(tmp_path: Path) -> None:
    """Outputs with the blur against the same job without it: every tile changed."""
    spec = imageops_spec(tmp_path)
    sharp = {"operations": [["resize", "200x300"], ["split", True]], "output": "png"}
    blurred = {"operations": [*sharp["operations"], ["blur", "gaussian"]], "output": "png"}
    images = [("x.png", encoded(512, 512, 5)), ("x.jpg", encoded(1024, 1024, 6, "jpg"))]
    with running_api(spec) as world, pipeline_threads(spec, replicas=1):
        pair = [world.submit(images, actions).json()["job"] for actions in (sharp, blurred)]
        statuses = [wait_done(world, job) for job in pair]
        tiles = [_pixels(world, status) for status in statuses]
    assert len(tiles[0]) == len(tiles[1]) == 8
    for plain, soft in zip(*tiles, strict=True):
        assert plain.shape == soft.shape == (150, 100, 3)
        assert np.abs(plain.astype(int) - soft.astype(int)).mean() > 1.0
        assert (
            np.abs(np.diff(soft.astype(int), axis=1)).mean()
            < np.abs(np.diff(plain.astype(int), axis=1)).mean()
        )


def _pixels(world: World, status: Any) -> list[np.ndarray]:
    links = [o["url"] for f in status["files"] for o in f["outputs"]]
    return [decode(world.client.get(url, headers=world.headers()).content) for url in links]


def test_an_image_that_fails_in_the_worker_is_failed_with_its_reason(tmp_path: Path) -> None:
    """An image put on the topic another way, without actions: dead-lettered, not lost."""
    from inferstream.bus import Record, open_bus
    from inferstream.envelope import new_envelope

    spec = imageops_spec(tmp_path)
    with running_api(spec) as world, pipeline_threads(spec, replicas=1):
        job = world.submit([("ok.png", encoded(64, 64))], {"operations": [["blur", "median"]]})
        job = job.json()["job"]
        stray = new_envelope(encoded(32, 32), "image/png", tenant=world.own)
        bus = open_bus(spec.bus)
        try:
            bus.produce(next(iter(spec.topics)), [Record(b"k", stray.SerializeToString())])
        finally:
            bus.close()
        assert wait_done(world, job)["status"] == "done"
        store = world.services.store

        def dead_lettered() -> bool:
            letters = store.list_dead_letters(world.own, limit=10).items
            return any(letter.root_id == stray.id for letter in letters)

        wait_for(dead_lettered, "the stray image's dead letter")
        [letter] = [d for d in store.list_dead_letters(world.own).items if d.root_id == stray.id]
        assert letter.stage == "apply" and "carries no actions" in letter.message


def _records(world: World, job: str) -> dict[str, Any]:
    store = world.services.store
    page = store.list_results(world.own, ResultFilter(app="imageops", group=job), limit=1000)
    assert page.next_cursor is None
    ids = [row.id for row in page.items]
    assert len(ids) == len(set(ids))
    return {row.id: row for row in page.items}


def test_status_of_a_job_lists_its_files_in_order(tmp_path: Path) -> None:
    spec = imageops_spec(tmp_path)
    with running_api(spec) as world:
        answer = world.submit(files(1)).json()
        status = world.client.get(f"{JOBS}/{answer['job']}", headers=world.headers()).json()
    assert status["status"] == "queued"
    assert [(f["index"], f["name"], f["status"]) for f in status["files"]] == [
        (0, "a.png", "queued"), (1, "b.jpg", "queued"), (2, "c.png", "queued")
    ]  # fmt: skip
    assert all(f["outputs"] == [] and f["outputs_expected"] is None for f in status["files"])
    assert status["actions"] is None and status["expired"] is False
