"""The leaves pipeline end to end on both buses, and with its photos and crops in a
bucket of the S3 test server, every output checked by id against the simulator's truth:
each leaf crop graded once per disease and joined once (0 lost, 0 doubled), at the blob
paths the issue names; then a replay of one grader with a new version, whose records
carry it while the old grades stay, and the diff between them."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
from blob_worlds import BlobWorld, LocalWorld, s3_world
from broker_testing import S3Server

from inferstream.apps.leaves import APP
from inferstream.apps.leaves.analysis import trial_analysis, version_diff
from inferstream.apps.leaves.field import check, expected_crops, read_records, send_photos
from inferstream.apps.leaves.simulator import DISEASES, Photo, simulate
from inferstream.blobs import open_blob_store
from inferstream.bus import open_bus
from inferstream.classify import load_model
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.stage_replay import replay_stage_in_store
from inferstream.store import ResultFilter, ResultsStore
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow
TENANT = "farm-a"
_TOPIC = re.compile(r"(?<![\w.])(photos|crops|grades\.[a-z]+|leaves\.graded)(?=[\s,:\].])")


def leaves_pipeline(
    tmp_path: Path, bus_url: str, prefix: str, rust_model: str = "", blobs: str = ""
) -> PipelineSpec:
    """The shipped pipeline file with this test's topic names (the Kafka broker is shared
    by the session), its blobs in ``tmp_path`` or at ``blobs``, and, optionally, another
    version of the rust grader."""
    text = _TOPIC.sub(lambda m: f"{prefix}.{m.group(1)}", APP.pipeline_path().read_text())
    text = text.replace("name: leaves\n", f"name: {prefix}\n")
    if rust_model:
        text = text.replace("disease: rust}", f"disease: rust, model: {rust_model}}}")
    path = tmp_path / f"{prefix}-{rust_model or 'v1'}.yaml"
    path.write_text(text)
    return load_pipeline(path).with_urls(
        bus=bus_url, store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=blobs or f"file://{tmp_path / 'blobs'}",
    )  # fmt: skip


def run(spec: PipelineSpec, photos: list[Photo], prefix: str, want: int) -> None:
    with ResultsStore(spec.store) as store, pipeline_threads(spec):
        bus = open_bus(spec.bus)
        try:
            send_photos(bus, open_blob_store(spec.blobs), photos, topic=f"{prefix}.photos")
        finally:
            bus.close()
        wait_for(lambda: store.count_results(TENANT, ResultFilter(app="leaves")) >= want, store)
        time.sleep(0.5)  # anything doubled would land now


def wait_for(condition, store: ResultsStore, timeout_s: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    """A generous bound for the pipeline to finish, not a speed check."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        letters = [d.message for d in store.list_dead_letters(TENANT, limit=3).items]
        assert time.monotonic() < deadline, f"not every record arrived; dead letters: {letters}"
        time.sleep(0.2)


def test_every_leaf_is_graded_once_per_disease_and_joined_once(
    tmp_path: Path, bus_url: str
) -> None:
    graded_once_each(tmp_path, bus_url, LocalWorld(tmp_path / "blobs"))


def test_photos_and_crops_in_a_bucket_of_s3(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = s3_world(monkeypatch, s3, "drone-trial")
    try:
        graded_once_each(tmp_path, f"sqlite:///{tmp_path / 'bus.db'}", blobs)
    finally:
        blobs.close()


def graded_once_each(tmp_path: Path, bus_url: str, blobs: BlobWorld) -> None:
    prefix = f"lv{uuid.uuid4().hex[:8]}"
    spec = leaves_pipeline(tmp_path, bus_url, prefix, blobs=blobs.store.url)
    photos = list(simulate(2, 2, seed=11, tenant=TENANT))
    expected = expected_crops(photos, load_model("leaf_detector"))
    run(spec, photos, prefix, len(expected) * (len(DISEASES) + 1))

    with ResultsStore(spec.store) as store:
        grades, leaves = read_records(store, TENANT, "grade"), read_records(store, TENANT, "leaf")
        assert store.list_dead_letters(TENANT, limit=5).items == []
        answer = trial_analysis(store, TENANT)
    result = check(photos, expected, grades, leaves)
    assert result.ok, result  # 0 lost, 0 doubled, nothing unexpected
    assert len(grades) == len(expected) * len(DISEASES) and len(leaves) == len(expected)
    assert result.partial_leaves == 0
    assert result.detector_precision == 1.0 and result.detector_recall == 1.0
    _check_fields_and_blobs(blobs, photos, grades, leaves)
    assert {(c["date"], c["area"], c["disease"]) for c in answer["cells"]} == {
        (p.date, p.area, d) for p in photos for d in DISEASES
    }
    assert _analysis_over_http(spec, prefix) == answer


def _analysis_over_http(spec: PipelineSpec, prefix: str) -> dict[str, object]:
    """The analysis route, as a viewer of the tenant; a device key may not read it."""
    from fastapi.testclient import TestClient

    from inferstream.api import ApiSettings, create_app
    from inferstream.api.auth import issue_key

    settings = ApiSettings(spec, f"{prefix}.photos", "test-secret-" + "0123456789abcdef" * 3)
    with TestClient(create_app(settings)) as client:
        accounts = client.app.state.services.accounts  # type: ignore[attr-defined]
        accounts.create_tenant(TENANT)
        viewer = issue_key(accounts, TENANT, "viewer key", "viewer").secret
        device = issue_key(accounts, TENANT, "device key", "device").secret
        url = "/v1/apps/leaves/analysis"
        assert client.get(url, headers={"X-API-Key": device}).status_code == 403
        answer = client.get(url, headers={"X-API-Key": viewer})
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


def _check_fields_and_blobs(blobs: BlobWorld, photos: list[Photo], grades, leaves) -> None:  # type: ignore[no-untyped-def]
    for photo in photos:
        assert blobs.raw(photo.blob_path) is not None
    by_leaf: dict[str, dict[str, int]] = {}
    for row in grades:
        a = row.attributes
        assert a["predicted_grade"] == int(row.label)
        assert a["disease_model_id"] == f"leaf_{a['disease_type']}"
        assert a["disease_model_version"] == "1.0.0" == row.model_version
        assert (a["cropper_model_id"], a["cropper_model_version"]) == ("leaf_detector", "1.0.0")
        assert row.subject == f"{a['position_id']}/{a['date']}/{a['leaf_crop_idx']}"
        by_leaf.setdefault(str(row.subject), {})[str(a["disease_type"])] = int(row.label)
    for row in leaves:
        a = row.attributes
        assert {d: a[f"grade_{d}"] for d in DISEASES} == by_leaf[str(row.subject)]
        key = f"{a['position_id']}/{a['date']}/leaf_detector/1.0.0/{a['leaf_crop_idx']}.png"
        assert a["crop_path"] == f"{TENANT}/{key}" and blobs.raw(a["crop_path"]) is not None


def test_a_new_rust_grader_replayed_keeps_the_old_grades_and_reports_the_diff(
    tmp_path: Path,
) -> None:
    bus_url, prefix = f"sqlite:///{tmp_path / 'bus.db'}", "lvreplay"
    photos = list(simulate(2, 2, seed=12, tenant=TENANT))
    n = len(expected_crops(photos, load_model("leaf_detector")))
    spec = leaves_pipeline(tmp_path, bus_url, prefix)
    run(spec, photos, prefix, n * (len(DISEASES) + 1))

    v2 = leaves_pipeline(tmp_path, bus_url, prefix, rust_model="leaf_rust_v2")
    stage = v2.stage("grade-rust")
    bus = open_bus(bus_url)
    try:
        replay_stage_in_store(bus, v2.store, group=stage.group(v2.name),
                              topics=list(stage.inputs), target="earliest")  # fmt: skip
    finally:
        bus.close()
    rust_v2 = ResultFilter(app="leaves", model_version="2.0.0")
    with ResultsStore(v2.store) as store, pipeline_threads(v2):
        wait_for(lambda: store.count_results(TENANT, rust_v2) >= n, store)
        time.sleep(0.5)
        diff = version_diff(store, TENANT, "rust", "1.0.0", "2.0.0")
        rust = [r for r in read_records(store, TENANT, "grade")
                if r.attributes["disease_type"] == "rust"]  # fmt: skip
    assert len(rust) == n and {r.model_version for r in rust} == {"2.0.0"}
    assert {r.attributes["disease_model_version"] for r in rust} == {"2.0.0"}
    assert diff.compared == n  # every crop has both versions' grades: the old ones stayed
    assert diff.changed == len(diff.changes) and diff.changed < n
