"""Windows are the same live, in a replay of the stage, and in a backlog drained later.

Live, two bursts of events are separated by a quiet spell: the windows of the first
burst close because the input is idle (no lag, nothing new). Replaying the window
stage while it keeps running, and draining the whole log with a new pipeline, close
them by event time instead; the results must be the same windows with the same ids
and counts, on both buses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flow_testing import drain_topic, produce_envelopes, running, wait_for

from inferstream.bus import Bus
from inferstream.envelope import Envelope, new_envelope, parse
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.runner import ensure_topics, make_worker
from inferstream.stage_replay import replay_stage_in_store

WINDOW_MS = 300

FLOW = """
name: {name}
bus: {bus}
store: sqlite:///{tmp}/results.db
topics:
  {p}events: 2
stages:
  - name: window
    input: {p}events
    window: {{kind: tumbling, size_ms: {window_ms}, lateness_ms: 200, keep: all,
              idle_ms: 200}}
    output: {p}{output}
"""


def flow(tmp_path: Path, bus_url: str, p: str, name: str, output: str) -> PipelineSpec:
    path = tmp_path / f"{name}.yaml"
    text = FLOW.format(
        name=name, bus=bus_url, tmp=tmp_path, p=p, window_ms=WINDOW_MS, output=output
    )
    path.write_text(text)
    return load_pipeline(path)


def burst(count: int) -> list[Envelope]:
    start = time.time_ns() // 1000
    return [
        new_envelope(b"e", "text/plain", key=f"k{i % 3}", created_at_us=start + i * 20_000)
        for i in range(count)
    ]


def results(
    bus: Bus, topic: str, expected: int
) -> dict[str, tuple[str, int, int, tuple[str, ...]]]:
    """Windows by id: key, start, count and members (distinct by id)."""
    found = {}
    for message in drain_topic(bus, topic, expected):
        env = parse(message.value)
        members = {m.id for m in _members(env)}
        attrs = env.attributes
        found[env.id] = (
            attrs["window.key"], int(attrs["window.start_us"]), int(attrs["window.count"]),
            tuple(sorted(members)),
        )  # fmt: skip
    return found


def _members(env: Envelope) -> list[Envelope]:
    from inferstream.envelope import EnvelopeBatch

    batch = EnvelopeBatch()
    batch.ParseFromString(env.payload.inline)
    return list(batch.envelopes)


def expected_windows(events: list[Envelope]) -> int:
    width = WINDOW_MS * 1000
    return len({(e.partition_key, e.created_at_us // width) for e in events})


@pytest.mark.slow
def test_live_replayed_and_backlog_windows_are_the_same(
    bus_url: str, bus: Bus, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    p = unique("rp") + "."
    live = flow(tmp_path, bus_url, p, f"{p}live", "windows")
    ensure_topics(bus, live)
    stage = live.stage("window")
    group = stage.group(live.name)
    with running(make_worker(live, "window", bus)):
        assert wait_for(lambda: bus.members(group) > 0, 60)
        first = burst(20)
        produce_envelopes(bus, f"{p}events", first)
        # The quiet spell: the first burst's windows close on idleness alone.
        assert len(results(bus, f"{p}windows", expected_windows(first))) == expected_windows(first)
        second = burst(20)
        produce_envelopes(bus, f"{p}events", second)
        total = expected_windows(first) + expected_windows(second)
        live_results = results(bus, f"{p}windows", total)
        assert len(live_results) == total
        assert sum(r[2] for r in live_results.values()) == 40
        # An event of the first burst's time now is late: it goes to events.late with
        # the reason, and no window changes (in the replay and the backlog neither).
        straggler = burst(1)[0]
        straggler.created_at_us = first[0].created_at_us
        produce_envelopes(bus, f"{p}events", [straggler])
        (late,) = [parse(m.value) for m in drain_topic(bus, f"{p}events.late", 1)]
        assert late.id == straggler.id and late.error.error_type == "LateEvent"
        assert "watermark" in late.error.message and late.error.stage == "window"

        outcome = replay_stage_in_store(
            bus, live.store, group=group, topics=stage.inputs, target="earliest", timeout_s=60
        )
        assert outcome is not None
        # The replay re-emits every window: each id now twice on the topic, unchanged.
        again = drain_topic(bus, f"{p}windows", 2 * total, timeout_s=90)
    assert len(again) == 2 * total
    for message in again:
        env = parse(message.value)
        assert env.id in live_results
        assert int(env.attributes["window.count"]) == live_results[env.id][2]

    # A new pipeline (a new group) drains the whole log as a backlog; the stage has the
    # same name, so its windows get the same ids.
    backlog = flow(tmp_path, bus_url, p, f"{p}backlog", "windows.backlog")
    ensure_topics(bus, backlog)
    with running(make_worker(backlog, "window", bus)):
        drained = results(bus, f"{p}windows.backlog", total)
    assert drained == live_results
