"""A user's step with keyed state: counts survive a restart and a redelivery."""

from __future__ import annotations

from pathlib import Path

import pytest
from flow_testing import drain_topic, produce_envelopes, running, wait_for

from inferstream.bus import Bus, open_bus
from inferstream.dataflow.state_store import StateStore
from inferstream.envelope import new_envelope, parse
from inferstream.errors import ConfigError
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.runner import ensure_topics, make_worker

FLOW = """
name: keyed
bus: sqlite:///{tmp}/bus.db
store: sqlite:///{tmp}/results.db
topics:
  events: 2
stages:
  - name: count
    input: events
    steps: [{steps}]
    output: counted
"""


def flow(tmp_path: Path, steps: str) -> PipelineSpec:
    path = tmp_path / "keyed.yaml"
    path.write_text(FLOW.format(tmp=tmp_path, steps=steps))
    return load_pipeline(path)


def test_counts_live_in_durable_state_and_a_redelivery_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    spec = flow(tmp_path, '"pipeline_steps:count_step", passthrough')
    bus: Bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    first = [new_envelope(b"e", "text/plain", key=f"k{i % 3}") for i in range(30)]
    produce_envelopes(bus, "events", first)
    with running(make_worker(spec, "count", bus)):
        out = [parse(m.value) for m in drain_topic(bus, "counted", 30)]
    assert sorted(int(e.attributes["seen"]) for e in out if e.partition_key == "k0") == list(
        range(1, 11)
    )
    # The group is moved back without clearing the state (as after a crash between the
    # state commit and the offset commit): the state has applied these, so they are
    # skipped, and new events continue the counts from the state in the store.
    bus.seek_group("keyed.count", "events", "earliest")
    more = [new_envelope(b"e", "text/plain", key="k0") for _ in range(5)]
    produce_envelopes(bus, "events", more)
    with running(make_worker(spec, "count", bus)):
        assert wait_for(lambda: sum(p.lag for p in bus.partitions("events", "keyed.count")) == 0)
    later = [parse(m.value) for m in drain_topic(bus, "counted", 35)]
    assert len(later) == 35, "a redelivered message was counted and sent again"
    fresh = {e.id for e in more}
    assert sorted(int(e.attributes["seen"]) for e in later if e.parent_id in fresh) == [
        11, 12, 13, 14, 15,
    ]  # fmt: skip
    state = StateStore(spec.store)
    try:
        assert state.size("keyed.count")[0] >= 3
    finally:
        state.close()
    bus.close()


def test_a_keyed_step_must_come_first(tmp_path: Path) -> None:
    spec = flow(tmp_path, 'passthrough, "pipeline_steps:count_step"')
    bus = open_bus(spec.bus)
    try:
        with pytest.raises(ConfigError, match="must be the stage's first step"):
            make_worker(spec, "count", bus)
    finally:
        bus.close()
