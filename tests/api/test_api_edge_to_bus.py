"""``inferstream edge --bus``: an edge agent hands its buffer to the central bus, where a
``check_ingest`` stage holds every item to the API's checks. On the real Kafka-protocol
broker and the embedded log: every scan is one record (counted by id), and what the
stage refuses is dead-lettered with the check's reason, as a client would hear a 4xx."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from pathlib import Path

import pytest
from api_testing import dicom_bytes
from egg_scans import drop_scans, egg_envelopes, flagship_behind_ingest, wait_for_records
from flow_testing import produce_envelopes, wait_for

from inferstream.apps.eggs import APP
from inferstream.bus import open_bus
from inferstream.edge import EdgeSettings, run_edge
from inferstream.envelope import new_envelope
from inferstream.store import ResultsStore
from inferstream.testing import pipeline_threads

SCANS = 12


@pytest.mark.parametrize("bus_kind", ["embedded", "kafka"])
def test_scans_sent_by_the_bus_are_checked_and_stored_once(
    tmp_path: Path, bus_kind: str, request: pytest.FixtureRequest
) -> None:
    bus_url = (
        request.getfixturevalue("kafka_url")
        if bus_kind == "kafka"
        else f"sqlite:///{tmp_path / 'central-bus.db'}"
    )
    # Groups and a tenant of this test's own: other tests leave scans on the session
    # broker's flagship topics (this pipeline reads them too, and stores them under their
    # tenants) and members in the flagship's groups.
    tenant = f"farm-{uuid.uuid4().hex[:8]}"
    spec = dataclasses.replace(flagship_behind_ingest(tmp_path, bus_url), name=f"eggs-{tenant}")
    inbox = tmp_path / "inbox"
    scans = egg_envelopes(SCANS, seed=500)
    drop_scans(inbox, scans)
    settings = EdgeSettings(
        buffer=tmp_path / "buffer", api="", api_key="", folder=inbox, bus=bus_url,
        topic="scans.edge", tenant=tenant, report_s=0.5,
    )  # fmt: skip
    stop = threading.Event()
    store = ResultsStore(spec.store)
    bus = open_bus(bus_url)
    try:
        with pipeline_threads(spec, replicas=1):
            agent = threading.Thread(target=run_edge, args=(settings, APP, stop, lambda _: None))
            agent.start()
            # What no edge agent checked: a file that is no scan.
            bad = [new_envelope(b"not a scan", "application/dicom", tenant=tenant, key="x")]
            produce_envelopes(bus, "scans.edge", bad)
            wait_for_records(store, tenant, SCANS)
            wait_for(lambda: bool(store.list_dead_letters(tenant, limit=1).items), 30)
            stop.set()
            agent.join(timeout=60)
        records = store.list_results(tenant, limit=100).items
        letters = store.list_dead_letters(tenant, limit=10).items
    finally:
        stop.set()
        bus.close()
        store.close()
    assert sorted(r.subject for r in records) == sorted(scan.partition_key for scan in scans)
    assert len({r.root_id for r in records}) == SCANS and all(r.label for r in records)
    assert [(d.stage, d.error_type) for d in letters] == [("ingest", "UnsupportedContent")]
    assert "none of the known kinds" in letters[0].message


def test_an_item_with_no_tenant_or_a_client_attribute_it_may_not_send() -> None:
    """The stage keeps only what a client may say, derives the rest, and refuses an item
    whose producer named no tenant."""
    from inferstream.ingest_step import check_ingest_step
    from inferstream.steps import StepContext

    step = check_ingest_step(StepContext(pipeline="eggs", stage="ingest", app=APP))
    forged = {"tray": "TRAY-9", "egg_id": "FORGED", "domain": "egg"}
    sent = new_envelope(dicom_bytes(seed=7), "application/dicom", tenant="farm", key="k",
                        attributes=forged)  # fmt: skip
    orphan = new_envelope(dicom_bytes(seed=8), "application/dicom", key="k")
    orphan.tenant = ""
    out, refused = step.process([sent, orphan])
    assert not isinstance(out, BaseException)
    assert out.attributes["egg_id"] == "EGG-000007" and out.attributes["tray"] == "TRAY-0042"
    assert "domain" not in out.attributes and out.id == sent.id and out.tenant == "farm"
    assert isinstance(refused, BaseException) and "names no tenant" in str(refused)


def test_the_ingest_stage_claim_checks_by_the_pipelines_size(tmp_path: Path) -> None:
    """``check_ingest`` sends scans above the pipeline's claim-check size as references
    (16 KB on the embedded bus with a local folder), unless its own size is given."""
    from inferstream.pipeline.spec import StepSpec
    from inferstream.runner import build_steps

    spec = flagship_behind_ingest(tmp_path, f"sqlite:///{tmp_path / 'bus.db'}")
    [scan] = egg_envelopes(1, seed=9, tenant="farm")  # a flagship scan: 33 KB
    assert len(scan.payload.inline) > spec.claim_check_bytes == 16 * 1024
    [step] = build_steps(spec, spec.stage("ingest"), "ingest-0")
    [out] = step.process([scan])
    assert not isinstance(out, BaseException) and out.payload.WhichOneof("body") == "blob"
    own = dataclasses.replace(
        spec.stage("ingest"), steps=(StepSpec("check_ingest", {"claim_check_kb": 256}),)
    )
    [step] = build_steps(spec, own, "ingest-0")
    [out] = step.process([scan])
    assert not isinstance(out, BaseException) and out.payload.WhichOneof("body") == "inline"
