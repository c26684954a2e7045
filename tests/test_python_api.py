"""The Python equivalent of a pipeline file, run in threads, with its stage metrics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from inferstream.bus import Record, open_bus
from inferstream.envelope import new_envelope, parse
from inferstream.errors import ConfigError
from inferstream.pipeline import BatchSettings, PipelineSpec, StageSpec, StepSpec, validate
from inferstream.testing import pipeline_threads


def spec_for(tmp_path: Path, name: str) -> PipelineSpec:
    return PipelineSpec(
        name=name,
        bus=f"sqlite:///{tmp_path / 'bus.db'}",
        store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
        topics={"in": 2},
        stages=(
            StageSpec(
                name="tagger",
                input="in",
                output="out",
                steps=(StepSpec("tag", {"checked": "yes"}), StepSpec("passthrough")),
                batch=BatchSettings(max_size=10, max_wait_ms=1),
            ),
        ),
    )


def metric(name: str, pipeline: str, stage: str) -> float:
    value = REGISTRY.get_sample_value(name, {"pipeline": pipeline, "stage": stage})
    return 0.0 if value is None else value


def test_a_pipeline_built_in_python_runs_and_counts_its_messages(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "py-api")
    validate(spec)
    bus = open_bus(spec.bus)
    with pipeline_threads(spec):
        envs = [new_envelope(b"x", "text/plain", key=str(i)) for i in range(40)]
        bus.produce("in", [Record(e.partition_key.encode(), e.SerializeToString()) for e in envs])
        reader = bus.consumer("reader", ["out"])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 40 and time.monotonic() < deadline:
            got += reader.poll_batch(100, 0.2)
        reader.close()
    bus.close()
    assert {parse(m.value).root_id for m in got} == {e.id for e in envs}
    assert all(parse(m.value).attributes["checked"] == "yes" for m in got)
    assert metric("inferstream_messages_in_total", "py-api", "tagger") == 40
    assert metric("inferstream_messages_out_total", "py-api", "tagger") == 40
    assert metric("inferstream_batch_size_count", "py-api", "tagger") >= 4
    assert metric("inferstream_message_age_seconds_count", "py-api", "tagger") == 40
    assert metric("inferstream_dead_letters_total", "py-api", "tagger") == 0


def test_validate_rejects_a_python_pipeline_with_an_unfed_topic(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "py-bad")
    broken = PipelineSpec(name=spec.name, stages=spec.stages, topics={"elsewhere": 1})
    with pytest.raises(ConfigError, match="reads topic 'in' that no stage writes"):
        validate(broken)
