"""Retention: an output answers 410 Gone once its retention is over, and the purge
deletes the bytes only expired outputs use, never those a live output shares; with the
blobs in a folder, then in a bucket of the S3 test server.

The API serves the pipeline file as shipped (24 hours); the pipeline's workers run
the same file with a retention so short that what they make is expired at once, then
with the long one: retention is what the worker stamped, not a clock the test races.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from blob_worlds import BlobWorld, LocalWorld, s3_world
from imageops_world import World, imageops_spec, running_api, wait_done

from inferstream.apps.imageops.images import encoded
from inferstream.apps.imageops.retention import purge_expired, retention_hours
from inferstream.blobs import content_key
from inferstream.pipeline import PipelineSpec
from inferstream.runner import housekeep
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow
ACTIONS = {"operations": [["split", True], ["blur", "median"]], "output": "png"}
SHARED = encoded(512, 512, seed=40)


class Setting:
    """The world, and the pipeline files with the two retentions."""

    def __init__(
        self, world: World, short: PipelineSpec, long: PipelineSpec, blobs: BlobWorld
    ) -> None:
        self.world, self.short, self.long, self.blobs = world, short, long, blobs

    def run(self, spec: PipelineSpec, image: bytes) -> Any:
        with pipeline_threads(spec, replicas=1):
            job = self.world.submit([("same.png", image)], ACTIONS).json()["job"]
            status = wait_done(self.world, job)
        assert status["status"] == "done", status
        return status

    def kept(self, digest: str) -> bool:
        return self.blobs.raw(content_key(digest, self.world.own)) is not None


@pytest.fixture(scope="module", params=["file", "s3"])
def setting(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setting]:
    folder = tmp_path_factory.mktemp("retention")
    with pytest.MonkeyPatch.context() as env:
        if request.param == "s3":
            blobs: BlobWorld = s3_world(env, request.getfixturevalue("s3"), "imageops")
        else:
            blobs = LocalWorld(folder / "blobs")
        suffix = uuid.uuid4().hex[:8]
        long = imageops_spec(folder, suffix=suffix, blobs=blobs.store.url)
        short = imageops_spec(folder, retention_hours=1e-9, suffix=suffix, blobs=blobs.store.url)
        try:
            with running_api(long) as world:
                yield Setting(world, short, long, blobs)
        finally:
            blobs.close()


def outputs(status: Any) -> list[Any]:
    return [output for file in status["files"] for output in file["outputs"]]


def test_retention_comes_from_the_pipeline_file(setting: Setting) -> None:
    assert retention_hours(setting.long) == 24
    assert retention_hours(setting.short) == 1e-9


def test_an_expired_output_is_410_and_a_live_one_200(setting: Setting) -> None:
    world = setting.world
    expired = setting.run(setting.short, encoded(512, 512, seed=41))
    live = setting.run(setting.long, encoded(512, 512, seed=42))
    assert expired["expired"] is True and live["expired"] is False
    assert all(o["expired"] for o in outputs(expired)) and len(outputs(expired)) == 4
    for output in outputs(expired):
        answer = world.client.get(output["url"], headers=world.headers())
        assert answer.status_code == 410, answer.text
        assert answer.json()["error"] == "gone" and "expired at" in answer.json()["detail"]
    for output in outputs(live):
        answer = world.client.get(output["url"], headers=world.headers())
        assert answer.status_code == 200 and answer.headers["etag"] == f'"{output["sha256"]}"'


def test_the_purge_keeps_what_a_live_output_shares(setting: Setting) -> None:
    world = setting.world
    gone = setting.run(setting.short, encoded(333, 517, seed=43))
    shared_expired = setting.run(setting.short, SHARED)
    shared_live = setting.run(setting.long, SHARED)  # the same bytes, a live job
    doomed = {o["sha256"] for o in outputs(gone)}
    kept = {o["sha256"] for o in outputs(shared_live)}
    assert kept == {o["sha256"] for o in outputs(shared_expired)}  # content-addressed
    assert all(setting.kept(d) for d in doomed | kept)

    # Under the long retention nothing is old enough yet: a queued job may still need it.
    assert purge_expired(setting.long).blobs_deleted == 0
    setting.blobs.tick()  # the short retention over by the store's clock too (S3: seconds)
    purged = purge_expired(setting.short)
    assert purged.blobs_deleted >= len(doomed) + 1  # its outputs and its uploaded image
    assert not any(setting.kept(d) for d in doomed)
    assert all(setting.kept(d) for d in kept)
    for output in outputs(shared_live):
        assert world.client.get(output["url"], headers=world.headers()).status_code == 200
    # The records stay: the expired job still says what it made, and that it is gone.
    again = world.client.get(f"/v1/apps/imageops/jobs/{gone['job']}", headers=world.headers())
    assert again.json()["expired"] is True and len(outputs(again.json())) == 4
    link = outputs(gone)[0]["url"]
    assert world.client.get(link, headers=world.headers()).status_code == 410
    assert purge_expired(setting.short).blobs_deleted == 0  # nothing left to do


def test_housekeeping_runs_the_purge(setting: Setting) -> None:
    done = housekeep(setting.short)
    assert done[0].startswith("topic retention dropped")
    assert done[1].startswith("imageops: ") and "expired outputs" in done[1]
