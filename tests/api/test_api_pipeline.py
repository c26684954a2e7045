"""The API with the real pipeline stages behind it: a scan the decode stage refuses
ends up dead-lettered in the store, and the API reports it with the reason."""

from __future__ import annotations

import threading
import time
from typing import Any

import cv2
import numpy as np
from api_testing import World

from inferstream.apps.eggs import APP
from inferstream.blobs import open_blob_store
from inferstream.pipeline import PipelineSpec
from inferstream.runner import make_worker
from inferstream.steps import StepContext, build_step
from inferstream.worker import StageWorker


def test_png_on_the_dicom_pipeline_is_dead_lettered_with_its_reason(images_world: World) -> None:
    """An API that takes any image (IMAGES) before the eggs stages: the decode step
    refuses the PNG, and the API reports the dead letter with its reason."""
    world = images_world
    ok, png = cv2.imencode(".png", np.zeros((32, 32), np.uint8))
    assert ok
    answer = world.client.post(
        "/v1/scans",
        files=[("files", ("a.png", bytes(png)))],
        headers=world.headers(world.own, "device"),
    )
    assert answer.status_code == 202, answer.text
    (scan_id,) = answer.json()["ids"]
    state = world.client.app.state.services  # type: ignore[attr-defined]
    spec = state.settings.pipeline
    stage = spec.stage("classify")
    # The classify stage's first step only: the model is not needed to refuse a PNG.
    context = StepContext(spec.name, stage.name, "t", spec.store, open_blob_store(spec.blobs))
    decode_only = StageWorker(
        state.bus, pipeline=spec.name, stage=stage.name, inputs=stage.inputs,
        router=stage.router, steps=[build_step("decode_dicom", context, {}, APP.steps)],
        max_batch=8, max_wait_s=0.05,
    )  # fmt: skip
    letters = make_worker(spec, "dead-letters", state.bus)
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in (decode_only, letters)]
    for thread in threads:
        thread.start()
    try:
        body = _wait_for_status(world, scan_id, "dead_lettered")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert body["dead_letter"]["stage"] == "classify"
    assert body["dead_letter"]["error_type"] == "InvalidScan"
    assert body["dead_letter"]["reason"]


def _wait_for_status(world: World, scan_id: str, wanted: str) -> dict[str, Any]:
    """Poll the scan until it reaches ``wanted`` (a generous bound, not a speed check)."""
    headers = world.headers(world.own, "viewer")
    deadline = time.monotonic() + 60
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = world.client.get(f"/v1/scans/{scan_id}", headers=headers).json()
        if body["status"] == wanted:
            return body
        time.sleep(0.05)
    raise AssertionError(f"scan stayed {body.get('status')!r}")


def test_a_scan_above_the_claim_check_size_travels_as_a_blob_and_is_classified(
    spec: PipelineSpec,
) -> None:
    import dataclasses

    from api_testing import JWT_SECRET, start_world

    from inferstream.api import ApiSettings
    from inferstream.apps.eggs.dicomgen import to_dicom_bytes
    from inferstream.apps.eggs.phantom import make_specs, render_batch
    from inferstream.envelope import parse
    from inferstream.testing import pipeline_threads

    small = dataclasses.replace(spec, claim_check_kb=1)
    settings = ApiSettings(pipeline=small, ingest_topic="scans.raw", jwt_secret=JWT_SECRET)
    [egg] = make_specs(1, seed=21)
    dicom = to_dicom_bytes(render_batch([egg])[0], egg)
    for world in start_world(settings):
        answer = world.client.post(
            "/v1/scans",
            content=dicom,
            headers={**world.headers(world.own, "device"), "Content-Type": "application/dicom"},
        )
        assert answer.status_code == 202, answer.text
        (scan_id,) = answer.json()["ids"]
        reader = world.client.app.state.services.bus.consumer("peek", ["scans.raw"])  # type: ignore[attr-defined]
        [message] = reader.poll_batch(10, 5.0)
        reader.close()
        env = parse(message.value)
        assert env.payload.WhichOneof("body") == "blob"
        assert env.payload.blob.size == len(dicom) and len(message.value) < 2048
        with pipeline_threads(small, replicas=1):
            body = _wait_for_status(world, scan_id, "processed")
        assert body["result"]["label"] == egg.label
