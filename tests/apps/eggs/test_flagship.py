"""The flagship end to end: simulated scanners -> eggs pipeline -> results store.

Runs ``inferstream example eggs`` itself (supervised worker processes) on the embedded
defaults, and on the Kafka-protocol broker with PostgreSQL; every scan must get
exactly one result and accuracy must beat the goal. Malformed DICOM must end as dead
letters with reasons while the stage keeps flowing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.demo import Summary, notes
from inferstream.apps.eggs.dicomgen import to_dicom_bytes
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.bus import Record, open_bus
from inferstream.envelope import derive_id, new_envelope, parse
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultsStore
from inferstream.testing import pipeline_threads

ACCURACY_GOAL = 0.98


def run_example(tmp_path: Path, *extra: str) -> dict[str, float]:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "inferstream", "example", "eggs",
            "--scans", "800", "--rate", "400", "--pool", "128", "--no-serve", "--no-linger",
            "--workdir", str(tmp_path / "work"), "--tenant", f"t-{uuid.uuid4().hex[:8]}",
            "--summary-json", str(summary), *extra,
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "results stored" in done.stdout, "no progress line was printed"
    result: dict[str, float] = json.loads(summary.read_text())
    return result


def check_summary(summary: dict[str, float]) -> None:
    assert summary["scans_sent"] == 800
    assert summary["results_stored"] == 800
    assert summary["lost"] == 0 and summary["duplicates"] == 0
    assert summary["accuracy"] >= ACCURACY_GOAL
    assert summary["not_eggs"] <= 4  # the guard's target: at most 0.5% of eggs flagged
    # The hatch results, as feedback: each version's accuracy equals the run's own.
    (version, accuracy), *_ = summary["accuracy_by_version"].items()
    assert version.startswith("egg_sexing 1.0.0") and abs(accuracy - summary["accuracy"]) < 1e-9
    assert 0 < summary["latency_p50_ms"] <= summary["latency_p99_ms"]
    assert summary["throughput_per_s"] > 0
    # What the machine had to give while the scans flowed (Linux: /proc/stat).
    assert 0 < summary["host_cpu_busy_pct"] <= 100
    assert 0 <= summary["host_cpu_steal_pct"] <= 100 - summary["host_cpu_busy_pct"]


@pytest.mark.slow
def test_flagship_on_the_embedded_defaults(tmp_path: Path) -> None:
    check_summary(run_example(tmp_path))


@pytest.mark.slow
def test_flagship_on_kafka_and_postgresql(
    tmp_path: Path, kafka_url: str, postgres_url: str
) -> None:
    check_summary(run_example(tmp_path, "--bus", kafka_url, "--store", postgres_url))


def _bad_scans() -> dict[str, bytes]:
    [spec] = make_specs(1, seed=3)
    good = to_dicom_bytes(render_batch([spec])[0], spec)
    ct = good.replace(b"MR", b"CT", 1)
    return {
        "truncated": good[: len(good) // 2],
        "wrong modality": ct,
        "missing pixel data": good[: good.rfind(b"\xe0\x7f\x10\x00")],
        "absurd dimensions": _with_rows(good, 60000),
        "not dicom": b"GIF89a" + b"\x00" * 200,
    }


def _with_rows(data: bytes, rows: int) -> bytes:
    tag = b"\x28\x00\x10\x00US\x02\x00"  # (0028,0010) Rows, explicit VR little endian
    at = data.index(tag) + len(tag)
    return data[:at] + rows.to_bytes(2, "little") + data[at + 2 :]


def test_malformed_dicom_ends_as_dead_letters_and_good_scans_flow(tmp_path: Path) -> None:
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}",
        store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )
    specs = make_specs(40, seed=5)
    good = [
        new_envelope(to_dicom_bytes(img, s), "application/dicom", tenant="farm", key=s.egg_id)
        for s, img in zip(specs, render_batch(specs), strict=True)
    ]
    bad = {
        reason: new_envelope(data, "application/dicom", tenant="farm", key=reason)
        for reason, data in _bad_scans().items()
    }
    bus = open_bus(spec.bus)
    store = ResultsStore(spec.store)
    try:
        with pipeline_threads(spec, replicas=1):
            mixed = good[:20] + list(bad.values()) + good[20:]
            bus.produce(
                "scans.raw",
                [Record(e.partition_key.encode(), e.SerializeToString()) for e in mixed],
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                letters = store.list_dead_letters("farm", limit=100).items
                if store.count_results("farm") >= len(good) and len(letters) >= len(bad):
                    break
                time.sleep(0.2)
        records = store.list_results("farm", limit=100).items
        # One record per good scan, under the id the classify stage derived from it.
        assert {(r.root_id, r.parent_id, r.id) for r in records} == {
            (e.id, e.id, derive_id(e.id, "classify", 0)) for e in good
        }
        letters = {d.id: d for d in store.list_dead_letters("farm", limit=100).items}
    finally:
        bus.close()
        store.close()
    expected_words = {
        "truncated": "truncated",
        "wrong modality": "CT",
        "missing pixel data": "pixel data",
        "absurd dimensions": "60000",
        "not dicom": "DICOM",
    }
    for reason, env in bad.items():
        letter = letters[env.id]
        assert letter.error_type == "InvalidScan" and letter.stage == "classify"
        assert expected_words[reason].lower() in letter.message.lower(), (reason, letter.message)


def _retained(bus_files: Path, copy: Path, topic: str) -> int:
    """Messages on ``topic`` of the embedded bus in ``bus_files`` but the example's
    warm-up scans (a tenant of their own), read from a copy."""
    copy.mkdir()
    for name in ("bus.db", "bus.db-wal"):
        if (bus_files / name).exists():
            shutil.copy(bus_files / name, copy / name)
    bus = open_bus(f"sqlite:///{copy / 'bus.db'}")
    consumer = bus.consumer("count", [topic])
    tenants: list[str] = []
    try:
        while batch := consumer.poll_batch(500, 0.5):
            tenants += [parse(m.value).tenant for m in batch]
    finally:
        consumer.close()
        bus.close()
    return sum(tenant != "warm-up" for tenant in tenants)


@pytest.mark.slow
def test_a_full_disk_stops_the_demo_with_its_summary_and_what_to_do(
    tmp_path: Path, small_disk: Path
) -> None:
    summary_file = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "inferstream", "example", "eggs",
            "--scans", "400", "--rate", "400", "--pool", "32", "--no-serve", "--no-linger",
            "--workdir", str(small_disk), "--summary-json", str(summary_file),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 2, output
    assert "\nsummary\n" in done.stdout, output
    summary = json.loads(summary_file.read_text())
    # Sent means accepted by the bus (beside the warm-up scans of their own tenant).
    assert 0 < summary["scans_sent"] < 400
    assert _retained(small_disk, tmp_path / "bus", "scans.raw") == summary["scans_sent"]
    assert summary["results_stored"] + summary["lost"] == summary["scans_sent"]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("inferstream example: error: "), output
    assert "disk is full" in last and "--workdir" in last, last
    assert "Traceback" not in done.stderr, output


def test_the_summary_says_when_its_latency_is_not_the_pipelines() -> None:
    fair = Summary(
        scans_sent=20000, results_stored=20000, lost=0, duplicates=0, accuracy=0.996,
        throughput_per_s=996.0, latency_p50_ms=9.0, latency_p99_ms=40.0,
        offered_rate_per_s=1000.0, host_cpu_busy_pct=70.0, host_cpu_steal_pct=1.0,
    )  # fmt: skip
    assert notes(fair) == []
    behind = replace(fair, throughput_per_s=860.0, latency_p50_ms=2013.0)
    (note,) = notes(behind)
    assert "stored 860 scans/s of the 1000/s offered" in note and "--rate 688" in note
    shared = replace(fair, host_cpu_steal_pct=15.2)
    (note,) = notes(shared)
    assert "held back 15 %" in note and "steal" in note
    assert len(notes(replace(behind, host_cpu_steal_pct=15.2))) == 2
    assert notes(replace(fair, host_cpu_steal_pct=None, host_cpu_busy_pct=None)) == []
    (note,) = notes(replace(fair, host_cpu_busy_pct=94.6))
    assert "busy 95 %" in note and "--rate 600" in note
    # Fallen behind says so; that the CPUs were busy then goes without saying.
    assert len(notes(replace(behind, host_cpu_busy_pct=99.0))) == 1
