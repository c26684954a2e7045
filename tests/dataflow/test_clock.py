"""The event-time clock (per-topic marks, the minimum over inputs, idleness), the
schedule of what falls due when the watermark passes, and the task state both live
in: what a commit writes and deletes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferstream.dataflow.clock import CLOCK_KEY, NO_WATERMARK, Clock, Schedule
from inferstream.dataflow.task import TaskState
from inferstream.errors import ConfigError


def new_task() -> TaskState:
    return TaskState("group", 0)


def test_a_task_has_no_watermark_until_every_input_was_heard_from() -> None:
    clock, task = Clock(["a", "b"], lateness_us=10), new_task()
    assert clock.watermark(task) == NO_WATERMARK
    clock.observe(task, "a", 1_000)
    assert clock.watermark(task) == NO_WATERMARK  # b may still send older events
    clock.observe(task, "b", 500)
    assert clock.watermark(task) == 490


def test_the_watermark_is_the_slowest_input_minus_lateness() -> None:
    clock, task = Clock(["a", "b"], lateness_us=100), new_task()
    clock.observe(task, "a", 5_000)
    clock.observe(task, "b", 2_000)
    assert clock.topic_watermark(task, "a") == 4_900
    assert clock.watermark(task) == 1_900
    clock.observe(task, "b", 1_000)  # out of order: marks never go back
    assert clock.watermark(task) == 1_900
    clock.observe(task, "b", 9_000)
    assert clock.watermark(task) == 4_900


def test_an_idle_input_follows_the_clock_but_never_goes_back() -> None:
    clock, task = Clock(["a", "b"], lateness_us=100), new_task()
    clock.observe(task, "a", 5_000)
    clock.idle(task, "b", 3_000)  # b never sent anything, but it is caught up and quiet
    assert clock.watermark(task) == 2_900
    clock.idle(task, "b", 2_000)
    assert clock.watermark(task) == 2_900
    clock.idle(task, "a", 1_000)  # an idle mark below the events' mark changes nothing
    clock.idle(task, "b", 99_000)
    assert clock.watermark(task) == 4_900


def test_a_task_that_heard_no_event_takes_no_idle_mark() -> None:
    # Its first events may come late from a slow start upstream: they set the clock.
    clock, task = Clock(["a"], lateness_us=2_000), new_task()
    assert clock.idle(task, "a", 1_000_000) == NO_WATERMARK
    before, after = clock.observe(task, "a", 10_000)  # stamped well before "now"
    assert (before, after) == (NO_WATERMARK, 8_000)
    assert clock.idle(task, "a", 1_000_000) == 998_000  # then quiet: follows the clock


def test_the_clock_lives_in_the_task_state_as_json() -> None:
    clock, task = Clock(["a"], lateness_us=0), new_task()
    clock.observe(task, "a", 42)
    restored = TaskState("group", 0, values=json.loads(json.dumps(task.values)))
    assert set(task.values) == {CLOCK_KEY}
    assert clock.watermark(restored) == 42


def test_a_topic_that_is_not_an_input_is_refused_with_the_inputs_named() -> None:
    clock = Clock(["a", "b"], lateness_us=0)
    with pytest.raises(ConfigError, match="inputs are a, b"):
        clock.observe(new_task(), "c", 1)
    with pytest.raises(ConfigError, match="at least one input"):
        Clock([], lateness_us=0)
    with pytest.raises(ConfigError, match="lateness"):
        Clock(["a"], lateness_us=-1)


calls = st.lists(
    st.tuples(
        st.sampled_from(["observe", "idle"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(-(10**12), 10**12),
    ),
    max_size=40,
)


@given(calls=calls, lateness=st.integers(0, 10**6))
def test_the_watermark_never_goes_back_and_matches_its_definition(
    calls: list[tuple[str, str, int]], lateness: int
) -> None:
    clock, task = Clock(["a", "b", "c"], lateness_us=lateness), new_task()
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    idles: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    previous = NO_WATERMARK
    for call, topic, value in calls:
        if call == "observe":
            clock.observe(task, topic, value)
            seen[topic].append(value - lateness)
        else:
            clock.idle(task, topic, value)
            if any(seen.values()):  # no idle mark before the task's first event
                idles[topic].append(value - lateness)
        expected = min(max(seen[t] + idles[t], default=NO_WATERMARK) for t in seen)
        assert clock.watermark(task) == expected
        assert expected >= previous
        previous = expected


schedule_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abcde"), st.integers(-20, 80)),
        st.tuples(st.just("remove"), st.sampled_from("abcde"), st.just(0)),
        st.tuples(st.just("pop"), st.just(""), st.integers(-20, 80)),
        st.tuples(st.just("restart"), st.just(""), st.just(0)),
    ),
    min_size=20,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops=schedule_ops, width=st.integers(1, 40))
def test_the_schedule_gives_exactly_what_is_due_in_order(
    ops: list[tuple[str, str, int]], width: int
) -> None:
    """Against a plain dict; restarts go through the committed changes, as JSON."""
    schedule, task = Schedule("due", width), new_task()
    stored: dict[str, Any] = {}
    expected: dict[str, int] = {}
    watermark = -100
    for op, entry, value in ops:
        if op == "add":
            if entry in expected:  # operators move an entry by removing it first
                schedule.remove(task, entry, expected.pop(entry))
            schedule.add(task, entry, value)
            expected[entry] = value
        elif op == "remove" and entry in expected:
            schedule.remove(task, entry, expected.pop(entry))
        elif op == "pop":
            watermark = max(watermark, value)  # watermarks never go back
            due = sorted((d, e) for e, d in expected.items() if d <= watermark)
            assert schedule.pop_due(task, watermark) == due
            expected = {e: d for e, d in expected.items() if d > watermark}
        elif op == "restart":
            written, deleted = task.changes()
            stored = {k: v for k, v in {**stored, **written}.items() if k not in deleted}
            task = TaskState("group", 0, values=json.loads(json.dumps(stored)))
    assert schedule.pop_due(task, 10**6) == sorted((d, e) for e, d in expected.items())
    assert task.values == {}  # nothing left behind


# --- what a commit of the task state writes and deletes ----------------------------


def commit(task: TaskState, stored: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Apply the task's changes to ``stored`` as the store does; the keys written and deleted."""
    written, deleted = task.changes()
    assert deleted <= set(stored), "a DELETE of a key the store does not hold"
    stored.update(json.loads(json.dumps(written)))
    for key in deleted:
        del stored[key]
    task.mark_committed(task.version + 1)
    return set(written), deleted


def test_a_key_put_and_deleted_between_two_commits_is_neither_written_nor_deleted() -> None:
    task, stored = new_task(), {}
    task.put("open", 1)
    task.delete("open")
    assert commit(task, stored) == (set(), set())
    task.put("kept", 1)
    commit(task, stored)
    task.delete("kept")
    task.put("kept", 2)
    task.delete("kept")  # it was stored before this batch: the store must drop it
    assert commit(task, stored) == (set(), {"kept"})
    loaded = TaskState("group", 0, values={"old": 1})
    loaded.delete("old")
    loaded.put("old", 2)
    assert commit(loaded, {"old": 1}) == ({"old"}, set())


@given(
    ops=st.lists(st.tuples(st.sampled_from(["put", "delete", "commit"]), st.sampled_from("abc")))
)
def test_committed_changes_make_the_store_equal_the_task(ops: list[tuple[str, str]]) -> None:
    task, stored = new_task(), {}
    for number, (op, key) in enumerate(ops):
        if op == "put":
            task.put(key, number)
        elif op == "delete":
            task.delete(key)
        else:
            commit(task, stored)
            assert stored == task.values
    commit(task, stored)
    assert stored == task.values
