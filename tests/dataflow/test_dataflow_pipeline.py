"""A whole dataflow on a real bus: fan-out, two branches, a join and a window.

photos -> split (3 crops each) -> grade-a, grade-b -> join by parent -> leaves
-> per-key tumbling window counting leaves. Checked by id against a reference computed
offline from the same inputs, on both buses.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from flow_testing import drain_topic, produce_envelopes, running, wait_for
from pipeline_steps import expected_grade

from inferstream.bus import Bus
from inferstream.envelope import Envelope, new_envelope, parse
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.runner import ensure_topics, make_worker

PHOTOS = 40
PARTS = 3
WINDOW_US = 500_000

FLOW = """
name: {name}
bus: {bus}
store: sqlite:///{tmp}/results.db
topics:
  {p}photos: 2
stages:
  - name: split
    input: {p}photos
    steps: [{{step: "pipeline_steps:split_step", parts: {parts}}}]
    output: {p}crops
  - name: grade-a
    input: {p}crops
    steps: [{{step: "pipeline_steps:grade_step", model: grade-a}}]
    output: {p}grades.a
  - name: grade-b
    input: {p}crops
    steps: [{{step: "pipeline_steps:grade_step", model: grade-b}}]
    output: {p}grades.b
  - name: join
    input: [{p}grades.a, {p}grades.b, {p}crops.dlq]
    join: {{by: parent_id, branches: [grade-a, grade-b], timeout_ms: 60000, mode: outer,
            idle_ms: 200}}
    output: {p}leaves
  - name: per-key
    input: {p}leaves
    # lateness covers the four hops from photo to leaf (each can take a second on tansu)
    window: {{kind: tumbling, size_ms: {window_ms}, lateness_ms: 10000, keep: count,
              idle_ms: 200}}
    output: {p}counts
"""


def flow(tmp_path: Path, bus_url: str, prefix: str) -> PipelineSpec:
    path = tmp_path / "flow.yaml"
    path.write_text(
        FLOW.format(
            name=f"{prefix}flow", bus=bus_url, tmp=tmp_path, p=prefix, parts=PARTS,
            window_ms=WINDOW_US // 1000,
        )
    )  # fmt: skip
    return load_pipeline(path)


def photos(now_us: int) -> list[Envelope]:
    """Photos on four keys, 37 ms apart in event time; photo 5's crops fail grade-b."""
    made = []
    for i in range(PHOTOS):
        env = new_envelope(
            b"img", "image/png", key=f"k{i % 4}", attributes={"n": str(i)},
            created_at_us=now_us + i * 37_000,
        )  # fmt: skip
        if i == 5:
            env.attributes["fail"] = "grade-b"
        made.append(env)
    return made


def reference_windows(inputs: list[Envelope]) -> Counter[tuple[str, int]]:
    """Leaves per (key, window start): every crop makes one leaf at its photo's time."""
    return Counter(
        (e.partition_key, e.created_at_us // WINDOW_US * WINDOW_US)
        for e in inputs
        for _ in range(PARTS)
    )


@pytest.mark.slow
def test_fan_out_join_and_window_match_the_offline_reference(
    bus_url: str, bus: Bus, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix = unique("df") + "."
    spec = flow(tmp_path, bus_url, prefix)
    ensure_topics(bus, spec)
    workers = [make_worker(spec, stage.name, bus) for stage in spec.stages]
    with running(*workers):
        # Event time follows the clock from here, and an idle input's watermark with it:
        # start the clock once every stage has joined its group (Kafka joins take seconds).
        groups = [stage.group(spec.name) for stage in spec.stages]
        assert wait_for(lambda: all(bus.members(g) > 0 for g in groups), 60)
        inputs = photos(time.time_ns() // 1000)
        produce_envelopes(bus, f"{prefix}photos", inputs)
        leaves = [parse(m.value) for m in drain_topic(bus, f"{prefix}leaves", PHOTOS * PARTS)]
        windows = reference_windows(inputs)
        counts = [parse(m.value) for m in drain_topic(bus, f"{prefix}counts", len(windows))]
    by_id = {leaf.id: leaf for leaf in leaves}
    assert len(by_id) == PHOTOS * PARTS, "a leaf was lost or a join emitted twice"
    n_of = {e.id: int(e.attributes["n"]) for e in inputs}
    for leaf in by_id.values():
        (frame,) = leaf.fanout
        n = n_of[frame.parent_id]
        grades = {p.model_name: int(p.label) for p in leaf.predictions}
        if n == 5:
            assert leaf.attributes["join.status"] == "partial"
            assert leaf.attributes["join.failed"] == "grade-b" and set(grades) == {"grade-a"}
        else:
            assert leaf.attributes["join.status"] == "complete", leaf.attributes
            assert grades == {g: expected_grade(leaf, g) for g in ("grade-a", "grade-b")}
    got: Counter[tuple[str, int]] = Counter()
    for window in {w.id: w for w in counts}.values():
        assert window.attributes["window.kind"] == "tumbling"
        slot = (window.attributes["window.key"], int(window.attributes["window.start_us"]))
        assert slot not in got, f"window {slot} emitted with two ids"
        got[slot] = int(window.attributes["window.count"])
    joins = _samples("inferstream_joins_total", spec.name)
    assert joins[("join", "complete")] >= PHOTOS * PARTS - PARTS
    assert joins[("join", "partial")] >= PARTS  # photo 5's crops, grade-b failed
    assert ("join", "") in _samples("inferstream_join_wait_seconds_count", spec.name)
    late = sum(p.high for p in bus.partitions(f"{prefix}leaves.late"))
    assert late == 0, f"{late} leaves came later than the lateness allows"
    assert got == windows


def _samples(name: str, pipeline: str) -> dict[tuple[str, str], float]:
    """Values of metric ``name`` for ``pipeline``'s stages, by (stage, result)."""
    from prometheus_client.parser import text_string_to_metric_families

    from inferstream.metrics import render

    body, _ = render()
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("pipeline") == pipeline:
                found[(sample.labels["stage"], sample.labels.get("result", ""))] = sample.value
    return found
