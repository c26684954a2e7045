"""The live hub against a real store (SQLite and PostgreSQL) and the embedded bus."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inferstream.api.live_hub import LiveHub
from inferstream.apps.eggs import APP
from inferstream.bus import Record, open_bus
from inferstream.envelope import now_us
from inferstream.pipeline import PipelineSpec, StageSpec, StepSpec
from inferstream.store import DeadLetterRow, ResultRow, ResultsStore

RowFactory = Callable[..., ResultRow]

A, B = "acme", "globex"


def _pipeline() -> PipelineSpec:
    stages = (
        StageSpec("classify", "scans.raw", (StepSpec("decode_dicom"),), output="scans.predicted"),
        StageSpec("store", "scans.predicted", (StepSpec("store_results"),)),
    )
    return PipelineSpec("eggs", stages, topics={"scans.raw": 2})


def _dead_letter(tenant: str, n: int, stage: str) -> DeadLetterRow:
    return DeadLetterRow(
        f"{tenant}-dl-{n}",
        tenant,
        stage,
        "InvalidInput",
        "bad DICOM",
        3,
        "scans.raw",
        0,
        n,
        now_us() - 1_000_000,
    )


def _snapshots(hub: LiveHub) -> dict[str, dict[str, Any]]:
    channels = [hub.channel(A), hub.channel(B)]
    return {tenant: json.loads(text) for (tenant, _), text in hub.tick(channels).items()}


def test_each_tenant_gets_only_its_own_rows(store: ResultsStore, make_row: RowFactory) -> None:
    labels = ["female", "female", "male", "not_developing"]
    store.upsert_results(
        [make_row(A, label=label, group=f"TRAY-A{i % 2}") for i, label in enumerate(labels)]
        + [make_row(B, label="male", group="TRAY-B") for _ in range(3)]
    )
    hub = LiveHub(store, APP)
    snaps = _snapshots(hub)
    a, b = snaps[A], snaps[B]
    assert a["tenant"] == A and b["tenant"] == B
    assert a["totals"]["scans"] == 4 and b["totals"]["scans"] == 3
    # The newest table names the scan each record was made from: the id the dashboard
    # opens with /v1/scans/{id}.
    assert {scan["id"].split("-scan-")[0] for scan in a["newest"]} == {A}
    assert {scan["id"].split("-scan-")[0] for scan in b["newest"]} == {B}
    assert [group["group"] for group in a["groups"]] == ["TRAY-A0", "TRAY-A1"]
    assert [group["group"] for group in b["groups"]] == ["TRAY-B"]
    assert a["totals"]["ratios"]["female_ratio"] == 0.5
    assert sum(a["confidence"]["counts"]) == 4


def test_a_second_tick_counts_only_new_rows(store: ResultsStore, make_row: RowFactory) -> None:
    store.upsert_results([make_row(A) for _ in range(5)])
    hub = LiveHub(store, APP)
    assert _snapshots(hub)[A]["totals"]["scans"] == 5
    store.upsert_results([make_row(A) for _ in range(2)])
    second = _snapshots(hub)[A]
    assert second["totals"]["scans"] == 7
    assert sum(second["series"]["throughput"]) == 7
    assert len(second["newest"]) == 7


def test_newest_table_holds_twenty_newest_first(store: ResultsStore, make_row: RowFactory) -> None:
    base = now_us() - 10_000_000
    store.upsert_results([make_row(A, stored_at_us=base + i * 1000) for i in range(30)])
    newest = _snapshots(LiveHub(store, APP))[A]["newest"]
    assert len(newest) == 20
    times = [scan["stored_at_us"] for scan in newest]
    assert times == sorted(times, reverse=True)
    assert set(newest[0]) >= {"id", "subject", "group", "label", "confidence", "model_version"}


def test_accuracy_and_dead_letters_are_per_tenant(
    store: ResultsStore, make_row: RowFactory
) -> None:
    rows = [make_row(A, label="female"), make_row(A, label="male"), make_row(B, label="male")]
    store.upsert_results(rows)
    for row in rows[:2]:
        store.add_feedback(A, str(row.subject), "female", app="eggs", head="sex")
    store.write_batch(dead_letters=[_dead_letter(A, i, "classify") for i in range(3)])
    snaps = _snapshots(LiveHub(store, APP, _pipeline()))
    accuracy = snaps[A]["accuracy"]
    assert [(x["model_version"], x["labelled"], x["correct"]) for x in accuracy] == [
        ("1.0.0", 2, 1)
    ]
    assert accuracy[0]["accuracy"] == 0.5
    assert snaps[B]["accuracy"] == []
    a_stages = {stage["name"]: stage for stage in snaps[A]["stages"]}
    b_stages = {stage["name"]: stage for stage in snaps[B]["stages"]}
    assert a_stages["classify"]["dead_letters"] == 3
    assert a_stages["store"]["dead_letters"] == 0
    assert b_stages["classify"]["dead_letters"] == 0


def test_stage_lag_and_rate_come_from_the_bus(
    store: ResultsStore, tmp_path: Path, make_row: RowFactory
) -> None:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    try:
        for topic in ("scans.raw", "scans.predicted"):
            bus.create_topic(topic, 2)
        bus.produce("scans.raw", [Record(f"k{i}".encode(), b"x") for i in range(6)])
        hub = LiveHub(store, APP, _pipeline(), bus)
        first = {s["name"]: s for s in _snapshots(hub)[A]["stages"]}
        assert first["classify"]["lag"] == 6
        assert first["store"]["lag"] == 0
        assert first["classify"]["group"] == "eggs.classify"
        consumer = bus.consumer("eggs.classify", ["scans.raw"])
        taken = []
        while len(taken) < 6:
            taken += consumer.poll_batch(10, 1.0)
        consumer.commit(taken)
        consumer.close()
        second = {s["name"]: s for s in _snapshots(hub)[A]["stages"]}
        assert second["classify"]["lag"] == 0
        assert second["classify"]["rate_per_s"] > 0
    finally:
        bus.close()


def test_each_application_of_a_deployment_gets_only_its_own_records(
    store: ResultsStore, make_row: RowFactory
) -> None:
    from fanout_app import APP as LEAVES

    store.upsert_results(
        [make_row(A, label="female") for _ in range(3)]
        + [make_row(A, app=LEAVES.name, head="grade", label="rust", group="F1") for _ in range(2)]
    )
    hub = LiveHub(store, [APP, LEAVES])
    eggs, leaves = (json.loads(text) for text in hub.tick(
        [hub.channel(A), hub.channel(A, LEAVES.name)]
    ).values())  # fmt: skip
    assert (eggs["app"]["name"], eggs["totals"]["scans"]) == ("eggs", 3)
    assert (leaves["app"]["name"], leaves["totals"]["scans"]) == (LEAVES.name, 2)
    assert leaves["totals"]["labels"] == {"healthy": 0, "rust": 2}
    assert [group["group"] for group in leaves["groups"]] == ["F1"]
    with pytest.raises(KeyError, match="not 'nowhere'"):
        hub.channel(A, "nowhere")
