"""Consumer lag on ``/metrics``, per stage and partition, on both buses: everything
retained before a group's first commit, what it has not committed after, only what
retention kept once it deleted some, and no made-up value when the bus cannot say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from api_testing import JWT_SECRET, start_world
from egg_scans import egg_envelopes, flagship
from flow_testing import produce_envelopes
from prometheus_client.parser import text_string_to_metric_families

from inferstream.api import ApiSettings
from inferstream.bus import RetentionPolicy, open_bus
from inferstream.pipeline import StageSpec, StepSpec

Series = dict[tuple[str, ...], float]


def _series(text: str, name: str, *labels: str) -> Series:
    found: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sample.labels[label] for label in labels)] = sample.value
    return found


def _lag(text: str, stage: str) -> dict[int, float]:
    series = _series(text, "inferstream_consumer_lag", "stage", "topic", "partition")
    return {int(p): v for (s, _, p), v in series.items() if s == stage}


@pytest.mark.parametrize("bus_kind", ["embedded", "kafka"])
def test_lag_per_partition_before_and_after_a_groups_commits(
    tmp_path: Path, bus_kind: str, request: pytest.FixtureRequest
) -> None:
    bus_url = request.getfixturevalue("kafka_url") if bus_kind == "kafka" else None
    spec = flagship(tmp_path, bus=bus_url)
    if bus_kind == "kafka":  # groups of its own (the topics are the session broker's)
        suffix = tmp_path.name[-12:].replace("_", "-")
        spec = dataclasses.replace(spec, name=f"eggs-{suffix}")
    worlds = start_world(ApiSettings(spec, "scans.raw", JWT_SECRET))
    world = next(worlds)
    bus = open_bus(spec.bus)
    try:
        produce_envelopes(bus, "scans.raw", egg_envelopes(12, seed=3))
        group = f"{spec.name}.classify"
        before = world.client.get("/metrics").text
        said_before = {p.partition: p.lag for p in bus.partitions("scans.raw", group)}
        consumer = bus.consumer(group, ["scans.raw"])
        taken = []
        while len(taken) < 5:
            taken += consumer.poll_batch(5 - len(taken), 1.0)
        consumer.commit(taken)
        consumer.close()
        after = world.client.get("/metrics").text
        said_after = {p.partition: p.lag for p in bus.partitions("scans.raw", group)}
        ends = {p.partition: p.high for p in bus.partitions("scans.raw")}
    finally:
        bus.close()
        worlds.close()
    assert _series(before, "inferstream_bus_up") == {(): 1.0}
    assert _lag(before, "classify") == said_before  # every partition, zeros too
    assert _lag(after, "classify") == said_after
    if bus_kind == "embedded":  # tansu's high watermarks read low: exact on ours only
        assert sum(said_before.values()) == 12  # never committed: all retained
        assert sum(said_after.values()) == 12 - len(taken)
    assert not any(s == "classify" for s, *_ in _series(
        before, "inferstream_consumer_committed", "stage", "partition"))  # fmt: skip
    committed = _series(after, "inferstream_consumer_committed", "stage", "partition")
    assert {int(p) for s, p in committed if s == "classify"} == {m.partition for m in taken}
    end = _series(after, "inferstream_partition_end", "topic", "partition")
    assert {int(p): v for (t, p), v in end.items() if t == "scans.raw"} == ends


def test_lag_counts_only_what_retention_kept(tmp_path: Path) -> None:
    spec = flagship(tmp_path)
    worlds = start_world(ApiSettings(spec, "scans.raw", JWT_SECRET))
    world = next(worlds)
    bus = open_bus(spec.bus)
    try:
        produce_envelopes(bus, "scans.raw", egg_envelopes(20, seed=4))
        consumer = bus.consumer(f"{spec.name}.classify", ["scans.raw"])
        consumer.commit(consumer.poll_batch(2, 1.0))
        consumer.close()
        dropped = bus.apply_retention("scans.raw", RetentionPolicy(max_messages=1))
        kept = sum(p.high - p.low for p in bus.partitions("scans.raw"))
        text = world.client.get("/metrics").text
    finally:
        bus.close()
        worlds.close()
    assert dropped > 0 and kept == 4  # one per partition
    assert sum(_lag(text, "classify").values()) == kept  # not the deleted ones


def test_no_lag_series_when_the_bus_cannot_say(tmp_path: Path) -> None:
    """A stage reading a topic the bus does not have: ``inferstream_bus_up`` 0, and no
    lag series at all rather than a 0 that would look healthy."""
    spec = flagship(tmp_path)
    worlds = start_world(ApiSettings(spec, "scans.raw", JWT_SECRET))
    world = next(worlds)
    ghost = StageSpec(name="ghost", input="no.such.topic", steps=(StepSpec("store_results"),))
    world.client.app.state.services.settings = dataclasses.replace(  # type: ignore[attr-defined]
        world.client.app.state.services.settings,  # type: ignore[attr-defined]
        pipeline=dataclasses.replace(spec, stages=(*spec.stages, ghost)),
    )
    text = world.client.get("/metrics").text
    worlds.close()
    assert _series(text, "inferstream_bus_up") == {(): 0.0}
    assert _series(text, "inferstream_consumer_lag", "stage") == {}
    assert "inferstream_messages_in" in text  # the rest of the page is still served
