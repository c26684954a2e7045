"""Replay with a diff, both buses: a stage's retained input through another registered
version, compared record by record with what the pipeline stored; the version here
rotates every label, so the differences are known exactly. JSON and HTML reports, an
isolated output topic, and the command."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from flow_testing import drain_topic, produce_envelopes, wait_for
from test_registry import relabelled, shipped

from inferstream.blobs import open_blob_store
from inferstream.bus import open_bus
from inferstream.cli import main
from inferstream.envelope import new_envelope, new_id, to_tensor
from inferstream.pipeline import load_pipeline
from inferstream.registry import ModelRegistry
from inferstream.replay_diff import replay_diff
from inferstream.runner import build_steps, ensure_topics
from inferstream.store import ResultFilter, ResultsStore
from inferstream.testing import pipeline_threads

SCANS = 60
FLOW = """
name: {p}diff
app: eggs
bus: {bus}
store: sqlite:///{tmp}/results.db
blobs: file://{tmp}/blobs
topics:
  {p}tensors: 2
stages:
  - name: score
    input: {p}tensors
    output: {p}scored
    steps: [{{step: classify, model: egg_sexing@champion}}]
  - name: store
    input: {p}scored
    steps: [store_results]
"""


def test_a_replay_through_another_version_reports_every_change(
    bus_url: str, tmp_path: Path
) -> None:
    p = f"d{new_id()[:8]}."
    path = tmp_path / "diff.yaml"
    path.write_text(FLOW.format(p=p, bus=bus_url, tmp=tmp_path))
    spec = load_pipeline(path)
    store = ResultsStore(spec.store)
    registry = ModelRegistry(store, open_blob_store(spec.blobs))
    registry.register(*shipped(), actor="ops")
    registry.register(*relabelled("2.0.0"), actor="ops")
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="ops", reason="start")
    bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    rng = np.random.default_rng(4)
    tenant = f"t-{new_id()[:6]}"
    scans = []
    for i in range(SCANS):
        env = new_envelope(b"", "application/x-tensor", tenant=tenant, key=f"tray-{i % 3}",
                           attributes={"egg_id": f"EGG-{i:03d}", "tray": f"T{i % 3}"})  # fmt: skip
        env.payload.tensor.CopyFrom(to_tensor(rng.random((1, 64, 64), dtype=np.float32)))
        scans.append(env)
    produce_envelopes(bus, f"{p}tensors", scans)
    try:
        with pipeline_threads(spec):
            assert wait_for(lambda: store.count_results(tenant, ResultFilter()) >= SCANS, 90)
        stored = store.list_results(tenant, ResultFilter(), limit=SCANS).items
        for row in stored[:20]:  # hatch results for a third of the eggs
            store.add_feedback(tenant, row.subject, row.label, app="eggs", head="sex")
        labels = shipped()[1]["labels"]
        rotated = dict(zip(labels, labels[1:] + labels[:1], strict=True))
        steps = build_steps(spec, spec.stage("score"), "test")
        report = replay_diff(
            spec, "score", "2.0.0", bus=bus, store=store, registry=registry, steps=steps,
            output_topic=f"{p}scored.replay",
        )  # fmt: skip
        for step in steps:
            step.close()
        isolated = drain_topic(bus, f"{p}scored.replay", SCANS, timeout_s=30)
    finally:
        bus.close()
    assert (report.compared, report.agreed, report.unmatched, report.refused) == (SCANS, 0, 0, 0)
    assert report.before_versions == Counter({"1.0.0": SCANS})
    expected = Counter((row.label, rotated[row.label]) for row in stored)
    assert report.confusion == expected
    assert {c.record_id for c in report.changed} == {row.id for row in stored}
    assert (report.labelled, report.correct_before, report.correct_after) == (20, 20, 0)
    assert len(isolated) == SCANS
    page = report.to_html()
    assert "<svg" in page and f"{SCANS} records compared, 0 agree" in page
    data = json.loads(json.dumps(report.to_dict()))
    assert data["accuracy_before"] == 1.0 and data["accuracy_after"] == 0.0
    # The command writes both reports; the same version as stored changes nothing.
    out = tmp_path / "same"
    args = ["models", "replay-diff", str(path), "--stage", "score", "--version", "1.0.0",
            "--json", f"{out}.json", "--html", f"{out}.html"]  # fmt: skip
    assert main(args) == 0
    same = json.loads(Path(f"{out}.json").read_text())
    assert (same["compared"], same["agreed"], same["changed"]) == (SCANS, SCANS, [])
    assert "records compared" in Path(f"{out}.html").read_text()
    store.close()
