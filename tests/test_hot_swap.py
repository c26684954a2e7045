"""A model alias moved while the stage runs, on both buses: the worker switches between
batches with no restart, every input is scored once by exactly one version (0 lost,
0 doubled), and the recorded switch says where: per partition, messages before its
offset were scored by the old version, from it on by the new one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from flow_testing import drain_topic, produce_envelopes, running, wait_for
from test_registry import relabelled, shipped

from inferstream.blobs import open_blob_store
from inferstream.bus import open_bus
from inferstream.classify import load_model
from inferstream.envelope import (
    ModelRole,
    derive_id,
    from_tensor,
    new_envelope,
    new_id,
    parse,
    to_tensor,
)
from inferstream.pipeline import load_pipeline
from inferstream.registry import ModelRegistry
from inferstream.runner import ensure_topics, make_worker
from inferstream.store import ResultsStore

SCANS = 600
FLOW = """
name: {p}swap
bus: {bus}
store: sqlite:///{tmp}/results.db
blobs: file://{tmp}/blobs
topics:
  {p}scans: 2
stages:
  - name: score
    input: {p}scans
    output: {p}scored
    steps: [{{step: classify, model: egg_sexing@champion, refresh_s: 0.1}}]
    batch: {{max_size: 16, max_wait_ms: 5}}
"""


def test_the_alias_moves_while_the_stage_runs_and_each_scan_is_scored_once(
    bus_url: str, tmp_path: Path
) -> None:
    prefix = f"s{new_id()[:8]}."
    path = tmp_path / "swap.yaml"
    path.write_text(FLOW.format(p=prefix, bus=bus_url, tmp=tmp_path))
    spec = load_pipeline(path)
    store = ResultsStore(spec.store)
    registry = ModelRegistry(store, open_blob_store(spec.blobs))
    registry.register(*shipped(), actor="ops")
    registry.register(*relabelled("2.0.0"), actor="ops")
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="ops", reason="start")
    bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    rng = np.random.default_rng(5)
    scans = [new_envelope(b"", "application/x-tensor", key=f"tray-{i % 7}") for i in range(SCANS)]
    for env in scans:
        env.payload.tensor.CopyFrom(to_tensor(rng.random((1, 64, 64), dtype=np.float32)))
    worker = make_worker(spec, "score", bus)
    try:
        with running(worker):
            produce_envelopes(bus, f"{prefix}scans", scans[: SCANS // 2])
            # The old version has scored some (the group committed offsets), then it moves.
            parts = lambda: bus.partitions(f"{prefix}scans", worker.group)  # noqa: E731
            assert wait_for(lambda: sum(p.committed or 0 for p in parts()) > 0, 90)
            registry.set_alias("egg_sexing", "champion", "2.0.0", actor="ops", reason="swap")
            for start in range(SCANS // 2, SCANS, 20):  # a steady trickle across the swap
                produce_envelopes(bus, f"{prefix}scans", scans[start : start + 20])
                wait_for(lambda: False, 0.02)
            scored = drain_topic(bus, f"{prefix}scored", SCANS, timeout_s=60)
        inputs = drain_topic(bus, f"{prefix}scans", SCANS, timeout_s=30)
    finally:
        bus.close()
    where = {parse(m.value).id: (m.topic, m.partition, m.offset) for m in inputs}
    by_output = {derive_id(i, "score", 0): i for i in where}
    outputs = [parse(m.value) for m in scored]
    assert Counter(Counter(o.id for o in outputs).values()) == {1: SCANS}  # 0 lost, 0 doubled
    versions = Counter(p.model_version for o in outputs for p in o.predictions)
    assert set(versions) == {"1.0.0", "2.0.0"} and sum(versions.values()) == SCANS
    # Each label is what its version gives for that scan (2.0.0's labels are rotated).
    old, labels = load_model("egg_sexing"), shipped()[1]["labels"]
    tensors = {env.id: env.payload.tensor for env in scans}
    rotated = dict(zip(labels, labels[1:] + labels[:1], strict=True))
    for out in outputs:
        (prediction,) = out.predictions
        (label,), _ = old.predict(from_tensor(tensors[by_output[out.id]])[None])
        expected = label if prediction.model_version == "1.0.0" else rotated[label]
        assert prediction.label == expected
    # The switch is recorded, and it is exactly where the versions change on each partition.
    (switch,) = registry.switches("egg_sexing")
    assert (switch.from_version, switch.to_version, switch.stage) == ("1.0.0", "2.0.0", "score")
    for out in outputs:
        topic, partition, offset = where[by_output[out.id]]
        # A partition the worker had not read before the switch is all new.
        first_new = switch.positions.get(topic, {}).get(str(partition), -1)
        new = offset >= first_new
        assert out.predictions[0].model_version == ("2.0.0" if new else "1.0.0"), (
            partition, offset, first_new,
        )  # fmt: skip
    store.close()


def test_a_version_that_cannot_serve_leaves_the_old_one_serving(tmp_path: Path) -> None:
    from inferstream.serving import ModelFollower
    from inferstream.steps import StepContext

    store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    registry = ModelRegistry(store, open_blob_store(f"file://{tmp_path}/b"))
    graph, info = shipped()
    registry.register(graph, info, actor="ops")
    registry.register(graph, {**info, "version": "9.0.0", "labels": ["a", "b", "c"]}, actor="ops")
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="ops", reason="start")

    def accept(info: Any) -> str | None:
        return None if "a" not in info.labels else "labels the head lacks: a, b, c"

    context = StepContext(pipeline="p", stage="score", worker="w")
    follower = ModelFollower(registry, "egg_sexing", "champion", context, refresh_s=0.0,
                             accept=accept)  # fmt: skip
    registry.set_alias("egg_sexing", "champion", "9.0.0", actor="ops", reason="bad")
    for _ in range(50):
        follower.begin_batch({("t", 0): 1})
        wait_for(lambda: False, 0.01)
    assert follower.version.version == "1.0.0" and follower.model.info.labels[0] == "female"
    assert registry.switches("egg_sexing") == []
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="ops", reason="back")
    follower.begin_batch({("t", 0): 2})  # the alias is back where it serves: nothing to do
    assert follower._loading is None
    follower.close()
    store.close()


def test_a_canary_acts_on_a_fixed_share_of_subjects_stable_by_hash(tmp_path: Path) -> None:
    from inferstream.apps.eggs import APP
    from inferstream.serving import CanaryClassifyStep, classify_step
    from inferstream.steps import StepContext

    url, blobs = f"sqlite:///{tmp_path / 'r.db'}", open_blob_store(f"file://{tmp_path}/b")
    registry = ModelRegistry(ResultsStore(url), blobs)
    registry.register(*shipped(), actor="ops")
    registry.register(*relabelled("2.0.0"), actor="ops")
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="ops", reason="r")
    registry.set_alias("egg_sexing", "challenger", "2.0.0", actor="ops", reason="r")
    context = StepContext(pipeline="p", stage="classify", store_url=url, blobs=blobs, app=APP)
    step = classify_step(context, model="egg_sexing@champion", canary="egg_sexing@challenger",
                         canary_share=0.1)  # fmt: skip
    assert isinstance(step, CanaryClassifyStep)
    rng = np.random.default_rng(9)
    tensor = to_tensor(rng.random((1, 64, 64), dtype=np.float32))

    def scans() -> list[Any]:
        made = []
        for i in range(1000):
            env = new_envelope(b"", "application/x-tensor", attributes={"egg_id": f"EGG-{i}"})
            env.payload.tensor.CopyFrom(tensor)
            made.append(env)
        return made

    first = step.process(scans())
    versions = [o.predictions[0].model_version for o in first]
    assert 0.07 < versions.count("2.0.0") / len(versions) < 0.13  # about a tenth
    again = [o.predictions[0].model_version for o in step.process(scans())]
    assert again == versions  # the same eggs go to the canary every time
    assert {o.predictions[0].role for o in first} == {ModelRole.MODEL_ROLE_CHAMPION}  # acts
    labels = {v: {o.predictions[0].label for o, w in zip(first, versions, strict=True) if w == v}
              for v in ("1.0.0", "2.0.0")}  # fmt: skip
    assert len(labels["1.0.0"]) == len(labels["2.0.0"]) == 1 and labels["1.0.0"] != labels["2.0.0"]
    step.close()
    registry.store.close()
