"""Windows: checked settings, correct windows against a brute-force reference, late
events reported and never dropped, the same outputs across a crash and a restart."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from dataflow_testing import (
    SECOND,
    Harness,
    Idle,
    Msg,
    Step,
    event,
    members,
    run_plain,
    run_with_crash,
    with_duplicates,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from inferstream.dataflow.clock import CLOCK_KEY
from inferstream.dataflow.operator import Emit
from inferstream.dataflow.window import ENVELOPES_CONTENT_TYPE, WindowOperator, WindowSpec
from inferstream.envelope import Envelope, derive_id
from inferstream.errors import ConfigError

STAGE = "win"
TOPICS = ("in1", "in2")
END_OF_TIME = 10**13  # an idle mark after every window of the generated streams


def operator(spec: WindowSpec, topics: Sequence[str] = ("in1",)) -> WindowOperator:
    return WindowOperator(spec, STAGE, topics)


def outs(emits: Sequence[Emit]) -> list[Envelope]:
    return [e.envelope for e in emits if e.kind == "out"]


def window_id(key: str, start_us: int) -> str:
    return derive_id(f"{key}\x1f{start_us}", STAGE, 0)


# --- settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"kind": "sliding", "size_ms": 10}, "tumbling, hopping or session"),
        ({"kind": "tumbling"}, "needs size_ms > 0, e.g. size_ms: 60000"),
        ({"kind": "tumbling", "size_ms": 10, "gap_ms": 5}, "gap_ms does not apply"),
        ({"kind": "hopping", "size_ms": 10}, "needs hop_ms > 0"),
        ({"kind": "hopping", "size_ms": 10, "hop_ms": 20}, "at most size_ms"),
        ({"kind": "session", "size_ms": 10, "gap_ms": 5}, "size_ms does not apply"),
        ({"kind": "session"}, "needs gap_ms > 0"),
        ({"kind": "tumbling", "size_ms": "10s"}, "whole number of milliseconds"),
        ({"kind": "tumbling", "size_ms": 10, "lateness_ms": -1}, "whole number"),
        ({"kind": "tumbling", "size_ms": 10, "key": "camera"}, "attribute:NAME"),
        ({"kind": "tumbling", "size_ms": 10, "keep": "latest_by:"}, "latest_by:NAME"),
    ],
)
def test_a_wrong_setting_says_what_to_write(settings_: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WindowSpec(**settings_)


def test_good_settings_are_accepted() -> None:
    spec = WindowSpec("hopping", size_ms=10_000, hop_ms=2_000, key="attribute:camera")
    assert (spec.size_us, spec.hop_us) == (10_000_000, 2_000_000)
    assert WindowSpec("tumbling", size_ms=5).hop_us == 5_000
    assert WindowSpec("session", gap_ms=3, keep="latest_by:camera").gap_us == 3_000


# --- behaviour, by example --------------------------------------------------------


def test_a_tumbling_window_emits_its_members_once_the_watermark_passes_its_end() -> None:
    harness = Harness(operator(WindowSpec("tumbling", size_ms=10_000)))
    first = harness.run([Msg("in1", event(i, t * SECOND)) for i, t in [("b", 3), ("a", 1)]])
    assert first == []
    assert harness.operator.open_count(harness.task) == 1
    (emit,) = harness.run([Msg("in1", event("c", 12 * SECOND))])
    out = emit.envelope
    assert emit.kind == "out"
    assert out.id == window_id("k", 0)
    assert (out.root_id, out.tenant, out.partition_key) == ("root-a", "t", "k")
    assert out.created_at_us == 10 * SECOND
    assert dict(out.attributes) == {
        "window.kind": "tumbling",
        "window.key": "k",
        "window.start_us": "0",
        "window.end_us": str(10 * SECOND),
        "window.count": "2",
    }
    assert out.payload.content_type == ENVELOPES_CONTENT_TYPE
    kept = members(out)
    assert [m.id for m in kept] == ["a", "b"]  # by event time
    # Payload bytes are stripped, their type kept.
    assert [(m.payload.WhichOneof("body"), m.payload.content_type) for m in kept] == [
        (None, "image/png"),
        (None, "image/png"),
    ]
    assert not out.predictions


def test_idleness_closes_the_last_window() -> None:
    harness = Harness(operator(WindowSpec("tumbling", size_ms=10_000, lateness_ms=2_000)))
    harness.run([Msg("in1", event("a", 1 * SECOND))])
    assert harness.run([Idle("in1", 11 * SECOND)]) == []  # 11 s - 2 s lateness < 10 s
    (emit,) = harness.run([Idle("in1", 12 * SECOND)])
    assert emit.envelope.attributes["window.count"] == "1"
    assert harness.operator.open_count(harness.task) == 0
    assert harness.run([Idle("in1", 99 * SECOND)]) == []


def test_a_late_event_is_reported_with_the_window_and_the_watermark() -> None:
    harness = Harness(operator(WindowSpec("tumbling", size_ms=10_000, lateness_ms=1_000)))
    harness.run([Msg("in1", event("a", 1 * SECOND)), Msg("in1", event("b", 25 * SECOND))])
    late = event("old", 9 * SECOND)
    (emit,) = harness.run([Msg("in1", late)])
    assert emit.kind == "late"
    assert emit.envelope is late
    assert emit.topic == "in1"
    assert f"window [0, {10 * SECOND}) us of key 'k' already closed" in emit.reason
    assert f"watermark {24 * SECOND} us" in emit.reason


def test_a_redelivered_message_counts_once() -> None:
    harness = Harness(operator(WindowSpec("tumbling", size_ms=10_000)))
    a = event("a", 1 * SECOND)
    harness.run([Msg("in1", a), Msg("in1", a), Msg("in1", event("b", 2 * SECOND))])
    (emit,) = harness.run([Msg("in1", a), Idle("in1", 10 * SECOND)])
    assert emit.envelope.attributes["window.count"] == "2"


def test_a_hopping_event_is_in_every_window_that_contains_it() -> None:
    harness = Harness(operator(WindowSpec("hopping", size_ms=3_000, hop_ms=1_000)))
    harness.run([Msg("in1", event("a", 2_500_000))])
    starts = [
        int(e.envelope.attributes["window.start_us"])
        for e in harness.run([Idle("in1", END_OF_TIME)])
    ]
    assert starts == [0, 1 * SECOND, 2 * SECOND]


def test_a_message_that_bridges_two_sessions_merges_them() -> None:
    harness = Harness(operator(WindowSpec("session", gap_ms=2_000, lateness_ms=5_000)))
    harness.run([Msg("in1", event("a", 1 * SECOND)), Msg("in1", event("c", 4 * SECOND))])
    assert harness.operator.open_count(harness.task) == 2
    harness.run([Msg("in1", event("b", int(2.5 * SECOND)))])
    assert harness.operator.open_count(harness.task) == 1
    (emit,) = harness.run([Idle("in1", END_OF_TIME)])
    out = emit.envelope
    assert out.id == window_id("k", 1 * SECOND)
    assert out.attributes["window.end_us"] == str(6 * SECOND)  # last event + gap
    assert out.created_at_us == 6 * SECOND
    assert [m.id for m in members(out)] == ["a", "b", "c"]


def test_an_event_of_a_closed_session_is_late_even_within_its_own_gap() -> None:
    harness = Harness(operator(WindowSpec("session", gap_ms=2_000)))
    harness.run([Msg("in1", event("a", 1 * SECOND))])
    (closed,) = harness.run([Msg("in1", event("b", 3_500_000))])  # closes a's session at 3 s
    assert closed.envelope.attributes["window.count"] == "1"
    # 2.9 s + gap is after the watermark (3.5 s) but would bridge to the emitted session.
    (emit,) = harness.run([Msg("in1", event("x", 2_900_000))])
    assert emit.kind == "late"
    assert "session of key 'k' that closed at 3000000 us" in emit.reason


def test_keep_latest_by_keeps_one_member_per_value_and_count_keeps_none() -> None:
    steps: list[Step] = [
        Msg("in1", event(i, t * SECOND, attributes={"camera": cam}))
        for i, t, cam in [("a", 1, "c1"), ("b", 3, "c2"), ("c", 2, "c1"), ("d", 0, "c2")]
    ]
    steps.append(Idle("in1", END_OF_TIME))
    latest = outs(
        Harness(operator(WindowSpec("tumbling", size_ms=10_000, keep="latest_by:camera"))).run(
            steps
        )
    )
    assert [m.id for m in members(latest[0])] == ["c", "b"]
    assert latest[0].attributes["window.count"] == "4"
    counted = outs(
        Harness(operator(WindowSpec("tumbling", size_ms=10_000, keep="count"))).run(steps)
    )
    assert members(counted[0]) == []
    assert counted[0].attributes["window.count"] == "4"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("partition_key", {"k1": 2, "k2": 1}),
        ("source", {"s1": 1, "s2": 2}),
        ("attribute:camera", {"c1": 1, "": 2}),
        ("none", {"": 3}),
    ],
)
def test_windows_are_keyed(key: str, expected: dict[str, int]) -> None:
    steps: list[Step] = [
        Msg("in1", event("a", 1, "k1", source="s1", attributes={"camera": "c1"})),
        Msg("in1", event("b", 2, "k1", source="s2")),
        Msg("in1", event("c", 3, "k2", source="s2")),
        Idle("in1", END_OF_TIME),
    ]
    emitted = outs(Harness(operator(WindowSpec("tumbling", size_ms=1_000, key=key))).run(steps))
    counts = {e.attributes["window.key"]: int(e.attributes["window.count"]) for e in emitted}
    assert counts == expected
    assert [e.attributes["window.key"] for e in emitted] == sorted(expected)  # (end, key)


def test_windows_wait_for_the_slowest_input() -> None:
    harness = Harness(operator(WindowSpec("tumbling", size_ms=1_000), topics=TOPICS))
    assert harness.run([Msg("in1", event("a", 0)), Msg("in1", event("b", 5 * SECOND))]) == []
    (emit,) = harness.run([Msg("in2", event("c", 1_500_000))])
    assert emit.envelope.attributes["window.start_us"] == "0"


# --- properties -------------------------------------------------------------------


@st.composite
def window_specs(draw: st.DrawFn) -> WindowSpec:
    kind = draw(st.sampled_from(["tumbling", "hopping", "session"]))
    lateness_ms = draw(st.integers(0, 3_000))
    keep = draw(st.sampled_from(["all", "count", "latest_by:camera"]))
    if kind == "tumbling":
        return WindowSpec(
            "tumbling", size_ms=draw(st.integers(1, 8)) * 1_000, lateness_ms=lateness_ms, keep=keep
        )
    if kind == "hopping":
        hop = draw(st.integers(1, 4)) * 500
        size = hop * draw(st.integers(1, 4)) + draw(st.sampled_from([0, 250]))
        return WindowSpec("hopping", size_ms=size, hop_ms=hop, lateness_ms=lateness_ms, keep=keep)
    return WindowSpec(
        "session", gap_ms=draw(st.integers(1, 4_000)), lateness_ms=lateness_ms, keep=keep
    )


@st.composite
def streams(draw: st.DrawFn, lateness_ms: int, in_order: bool) -> list[Msg]:
    """Events on two topics; ``in_order``: none more out of order than the lateness."""
    # A drawn length, not st.lists: its lengths lean to the smallest.
    instants = st.integers(-5 * SECOND, 30 * SECOND)
    bases = sorted(draw(instants) for _ in range(draw(st.integers(0, 30))))
    if in_order:
        times = [b - draw(st.integers(0, lateness_ms * 1_000)) for b in bases]
    else:
        times = draw(st.permutations(bases))
    msgs = []
    for index, t in enumerate(times):
        env = event(
            f"e{index}",
            t,
            draw(st.sampled_from(["k1", "k2"])),
            attributes={"camera": draw(st.sampled_from(["c1", "c2", "c3"]))},
        )
        msgs.append(Msg(draw(st.sampled_from(TOPICS)), env))
    return msgs


def reference(spec: WindowSpec, msgs: Sequence[Msg]) -> dict[str, tuple[int, int, list[str]]]:
    """Window id -> (start, end, member ids), computed offline from all the events."""
    events = {m.env.id: m.env for m in msgs}
    by_window: dict[tuple[str, int], list[Envelope]] = defaultdict(list)
    ends: dict[tuple[str, int], int] = {}
    if spec.kind == "session":
        for key in {e.partition_key for e in events.values()}:
            mine = sorted(
                (e for e in events.values() if e.partition_key == key),
                key=lambda e: e.created_at_us,
            )
            start = mine[0].created_at_us
            for prev, env in zip([None, *mine], mine, strict=False):
                if prev is not None and env.created_at_us - prev.created_at_us >= spec.gap_us:
                    start = env.created_at_us
                by_window[(key, start)].append(env)
                ends[(key, start)] = env.created_at_us + spec.gap_us
    else:
        for env in events.values():
            t = env.created_at_us
            for start in range((t - spec.size_us) // spec.hop_us * spec.hop_us, t + 1, spec.hop_us):
                if start <= t < start + spec.size_us:
                    by_window[(env.partition_key, start)].append(env)
                    ends[(env.partition_key, start)] = start + spec.size_us
    return {
        window_id(key, start): (start, ends[(key, start)], sorted(e.id for e in envs))
        for (key, start), envs in by_window.items()
    }


def summary(out: Envelope) -> tuple[int, int, int]:
    a = out.attributes
    return int(a["window.start_us"]), int(a["window.end_us"]), int(a["window.count"])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), spec=window_specs())
def test_windows_match_a_brute_force_reference(data: st.DataObject, spec: WindowSpec) -> None:
    msgs = with_duplicates(data.draw, data.draw(streams(spec.lateness_ms, in_order=True)))
    steps: list[Step] = [*msgs, Idle("in1", END_OF_TIME), Idle("in2", END_OF_TIME)]
    emits = Harness(operator(spec, TOPICS)).run(steps)
    expected = reference(spec, msgs)
    got = {e.id: summary(e) for e in outs(emits)}
    assert got == {i: (s, e, len(m)) for i, (s, e, m) in expected.items()}
    kept = {e.id: sorted(m.id for m in members(e)) for e in outs(emits)}
    if spec.keep == "all":
        assert kept == {i: m for i, (_s, _e, m) in expected.items()}
    elif spec.keep == "latest_by:camera":
        events = {m.env.id: m.env for m in msgs}
        assert kept == {
            i: latest_per_camera([events[x] for x in m]) for i, (_s, _e, m) in expected.items()
        }
    # Only a redelivery of a message whose windows closed meanwhile may be late.
    late = [e.envelope.id for e in emits if e.kind == "late"]
    redelivered = [m.env.id for m in msgs]
    assert all(redelivered.count(ident) > 1 for ident in late)
    assert len(late) <= len(redelivered) - len(set(redelivered))


def latest_per_camera(envs: Sequence[Envelope]) -> list[str]:
    latest: dict[str, Envelope] = {}
    for env in sorted(envs, key=lambda e: (e.created_at_us, e.id)):
        latest[env.attributes["camera"]] = env
    return sorted(env.id for env in latest.values())


@settings(max_examples=300, deadline=None)
@given(data=st.data(), spec=window_specs())
def test_every_event_is_counted_once_or_reported_late(
    data: st.DataObject, spec: WindowSpec
) -> None:
    msgs = data.draw(streams(spec.lateness_ms, in_order=False))
    emits = Harness(operator(spec, TOPICS)).run(
        [*msgs, Idle("in1", END_OF_TIME), Idle("in2", END_OF_TIME)]
    )
    late = [e.envelope.id for e in emits if e.kind == "late"]
    assert all(e.reason for e in emits if e.kind == "late")
    windows = outs(emits)
    for out in windows:
        start, end = int(out.attributes["window.start_us"]), int(out.attributes["window.end_us"])
        assert all(start <= m.created_at_us < end for m in members(out))
    if spec.kind == "hopping":  # each event in several windows: counted in at least one
        counted = {m.id for out in windows for m in members(out)}
        assert spec.keep != "all" or counted | set(late) == {m.env.id for m in msgs}
    else:
        assert sum(int(out.attributes["window.count"]) for out in windows) + len(late) == len(msgs)
    assert len({out.id for out in windows}) == len(windows)


@st.composite
def runs(draw: st.DrawFn) -> tuple[WindowSpec, list[Step]]:
    """Any spec, any order, duplicates, and idle calls now and then."""
    spec = draw(window_specs())
    steps: list[Step] = list(
        with_duplicates(draw, draw(streams(spec.lateness_ms, in_order=draw(st.booleans()))))
    )
    for _ in range(draw(st.integers(0, 3))):
        idle = Idle(draw(st.sampled_from(TOPICS)), draw(st.integers(0, 40 * SECOND)))
        steps.insert(draw(st.integers(0, len(steps))), idle)
    return spec, [*steps, Idle("in1", END_OF_TIME), Idle("in2", END_OF_TIME)]


@settings(max_examples=200, deadline=None)
@given(run=runs())
def test_the_same_messages_in_the_same_order_give_the_same_outputs(
    run: tuple[WindowSpec, list[Step]],
) -> None:
    spec, steps = run
    first = run_plain(lambda: operator(spec, TOPICS), steps)
    again = run_plain(lambda: operator(spec, TOPICS), steps)
    assert first.signatures() == again.signatures()
    # All closed and forgotten at the end (a run with no event has no clock either).
    assert set(first.values) <= {CLOCK_KEY}


@settings(max_examples=300, deadline=None)
@given(run=runs(), data=st.data())
def test_a_crash_and_restart_from_the_committed_state_gives_the_same_outputs(
    run: tuple[WindowSpec, list[Step]], data: st.DataObject
) -> None:
    spec, steps = run
    last = len(steps) - 1
    commits = data.draw(st.sets(st.integers(0, last)))
    crash = data.draw(st.integers(0, last))
    plain = run_plain(lambda: operator(spec, TOPICS), steps)
    crashed = run_with_crash(lambda: operator(spec, TOPICS), steps, sorted(commits), crash)
    assert crashed.signatures() == plain.signatures()
    assert crashed.values == plain.values
