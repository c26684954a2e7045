"""Joins: checked settings; complete, partial, failed-branch, timed-out, late and
duplicate members; fan-out joins; the same outputs across a crash and a restart."""

from __future__ import annotations

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
    run_plain,
    run_with_crash,
    with_duplicates,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from inferstream.dataflow.clock import CLOCK_KEY
from inferstream.dataflow.join import JoinOperator, JoinSpec
from inferstream.dataflow.operator import Emit
from inferstream.envelope import Envelope, Prediction, derive_id
from inferstream.errors import ConfigError

STAGE = "merge"
TOPICS = ("results", "failures")
BRANCHES = ("a", "b", "c")
END_OF_TIME = 10**13


def operator(**settings_: Any) -> JoinOperator:
    return JoinOperator(JoinSpec(**{"timeout_ms": 5_000, **settings_}), STAGE, TOPICS)


def result(branch: str, parent: str, t_us: int = SECOND, **more: Any) -> Msg:
    """The output of ``branch`` for input ``parent``, as the worker names it."""
    ident = derive_id(parent, branch, 0)
    more.setdefault("label", f"{branch}-label")
    return Msg("results", event(ident, t_us, parent=parent, stage=branch, **more))


def failure(branch: str, parent: str, t_us: int = SECOND, **more: Any) -> Msg:
    """The dead letter of ``branch`` for input ``parent``: a copy of the input."""
    return Msg("failures", event(parent, t_us, parent="upstream", failed_at=branch, **more))


def quiet(now_us: int) -> list[Step]:
    return [Idle(topic, now_us) for topic in TOPICS]


def joined(emits: Sequence[Emit]) -> list[Envelope]:
    return [e.envelope for e in emits if "join.status" in e.envelope.attributes]


def status(env: Envelope) -> dict[str, str]:
    return {k: v for k, v in env.attributes.items() if k.startswith("join.")}


# --- settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"by": "parent", "expect": 2}, "parent_id, fanout, root_id or attribute:NAME"),
        ({"expect": 2, "timeout_ms": 0}, "timeout_ms >= 1"),
        ({"by": "root_id"}, "needs expect .* or branches"),
        ({"by": "fanout", "expect": 3}, "takes its count from the fan-out frame"),
        ({"branches": ("a", "a")}, "distinct stages"),
        ({"branches": "a"}, "list of stage names"),
        ({"branches": ("a", "b"), "expect": 3}, "between 1 and the number of branches"),
        ({"expect": 0}, "expect must be"),
        ({"expect": True}, "whole number"),
        ({"expect": 2, "mode": "left"}, "inner or outer"),
    ],
)
def test_a_wrong_setting_says_what_to_write(settings_: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JoinSpec(**{"timeout_ms": 1_000, **settings_})


def test_branches_from_a_file_become_a_tuple() -> None:
    spec = JoinSpec(branches=["a", "b"], timeout_ms=1_000)  # type: ignore[arg-type]
    assert spec.branches == ("a", "b")
    assert JoinSpec(by="fanout", timeout_ms=2).timeout_us == 2_000


# --- by example -------------------------------------------------------------------


def test_a_complete_join_carries_every_branch_in_branch_order() -> None:
    harness = Harness(operator(branches=BRANCHES[:2]))
    a = result("a", "P", attributes={"site": "a-site"})
    b = result("b", "P", attributes={"site": "b-site", "only_b": "1"})
    for msg in (a, b):  # made before the broadcast: every branch carries it
        msg.env.predictions.insert(0, Prediction(model_name="upstream", label="x"))
    assert harness.run([b]) == []
    assert harness.operator.open_count(harness.task) == 1
    (emit,) = harness.run([a])
    out = emit.envelope
    assert emit.kind == "out"
    assert out.id == derive_id("P", STAGE, 0)
    assert out.parent_id == "P"
    assert out.payload.inline == b"pixels-" + derive_id("P", "a", 0).encode()  # a's copy
    assert not out.HasField("error")
    assert [p.label for p in out.predictions] == ["x", "a-label", "b-label"]
    assert out.attributes["site"] == "a-site"  # first in branch order wins
    assert out.attributes["only_b"] == "1"
    assert status(out) == {
        "join.status": "complete",
        "join.members": "2",
        "join.missing": "",
        "join.failed": "",
    }
    assert harness.operator.open_count(harness.task) == 0


def test_a_join_that_opens_and_completes_between_commits_never_reaches_the_store() -> None:
    harness = Harness(operator(branches=BRANCHES[:2]))
    harness.run([result("a", "Q")])
    harness.commit()  # Q waits in the store
    (p, q) = harness.run([result("a", "P"), result("b", "P"), result("b", "Q")])
    assert [e.envelope.parent_id for e in (p, q)] == ["P", "Q"]
    written, deleted = harness.task.changes()
    assert not [key for key in written if key.startswith("join/")]
    assert {key for key in deleted if key.startswith("join/")} == {"join/Q"}


def test_without_branches_the_join_counts_distinct_members() -> None:
    harness = Harness(operator(by="root_id", expect=3))
    msgs = [Msg("results", event(f"m{i}", SECOND * (3 - i), label=f"l{i}")) for i in range(3)]
    for m in msgs:
        m.env.root_id = "R"
    assert harness.run([msgs[0], msgs[0], msgs[1]]) == []  # the redelivery counts once
    (emit,) = harness.run([msgs[2]])
    assert emit.envelope.id == derive_id("R", STAGE, 0)
    assert [p.label for p in emit.envelope.predictions] == ["l2", "l1", "l0"]  # event time


@pytest.mark.parametrize("mode", ["inner", "outer"])
def test_a_failed_branch_ends_the_join_as_partial_without_waiting(mode: str) -> None:
    harness = Harness(operator(branches=BRANCHES, mode=mode))
    emits = harness.run([failure("a", "P"), result("b", "P"), result("c", "P")])
    (emit,) = emits
    assert status(emit.envelope) == {
        "join.status": "partial",
        "join.members": "3",
        "join.missing": "",
        "join.failed": "a",
    }
    assert [p.label for p in emit.envelope.predictions] == ["b-label", "c-label"]
    assert emit.envelope.parent_id == "P"  # the dead letter's own id was the key
    if mode == "outer":
        assert (emit.kind, emit.reason) == ("out", "")
    else:
        assert emit.kind == "dead"
        assert emit.reason == "join incomplete: missing none, failed a"


@pytest.mark.parametrize("mode", ["inner", "outer"])
def test_a_join_times_out_in_event_time(mode: str) -> None:
    harness = Harness(operator(branches=BRANCHES[:2], mode=mode, lateness_ms=1_000))
    harness.run([result("a", "P", 1 * SECOND), result("a", "Q", 2 * SECOND)])
    assert harness.run(quiet(6 * SECOND)) == []  # watermark 5 s < 1 s + 5 s timeout
    emits = harness.run(quiet(8 * SECOND))  # 7 s: both are due, P first
    assert [e.envelope.parent_id for e in emits] == ["P", "Q"]
    assert [e.kind for e in emits] == ["out" if mode == "outer" else "dead"] * 2
    assert status(emits[0].envelope)["join.missing"] == "b"
    if mode == "inner":
        assert emits[0].reason == "join incomplete: missing b, failed none"


def test_members_after_their_join_went_out_are_late_with_the_reason() -> None:
    harness = Harness(operator(branches=BRANCHES[:2]))
    harness.run([result("a", "P"), result("b", "P")])
    (again,) = harness.run([result("a", "P")])
    assert (again.kind, again.topic) == ("late", "results")
    assert again.reason == "the join of 'P' was already emitted (complete)"
    harness.run(quiet(20 * SECOND))
    (old,) = harness.run([result("a", "Q", 2 * SECOND)])
    assert old.kind == "late"
    assert "event time 2000000 us + timeout 5000 ms is behind the watermark" in old.reason


def test_a_join_times_out_from_its_earliest_member() -> None:
    harness = Harness(operator(branches=BRANCHES))
    harness.run([result("b", "P", 3 * SECOND), result("a", "P", 1 * SECOND)])
    assert harness.run(quiet(5_900_000)) == []
    (emit,) = harness.run(quiet(6 * SECOND))
    assert status(emit.envelope)["join.missing"] == "c"


@pytest.mark.parametrize("branches", [BRANCHES[:1], BRANCHES[:2]])
def test_emitted_joins_are_forgotten_after_twice_the_timeout(branches: tuple[str]) -> None:
    harness = Harness(operator(branches=branches))
    harness.run([result(b, "P") for b in branches])
    harness.run(quiet(10 * SECOND))  # 1 s + 2 * 5 s is still ahead
    again = result("a", "P", 9 * SECOND)  # not behind the watermark by its own timeout
    (late,) = harness.run([again])
    assert late.reason == "the join of 'P' was already emitted (complete)"
    harness.commit()
    harness.restart()  # the tombstone is in the committed state
    (late,) = harness.run([again])
    assert late.reason == "the join of 'P' was already emitted (complete)"
    harness.run(quiet(11 * SECOND))
    assert list(harness.task.values) == [CLOCK_KEY]


def test_a_member_later_than_the_tombstone_opens_a_new_join_with_the_same_id() -> None:
    harness = Harness(operator(branches=BRANCHES[:2]))
    (first,) = harness.run([result("a", "P"), result("b", "P")])
    harness.run(quiet(11 * SECOND))  # the tombstone of P (1 s + 2 * 5 s) is gone
    assert harness.run([result("a", "P", 12 * SECOND)]) == []
    (second,) = harness.run(quiet(17 * SECOND))
    assert second.envelope.id == first.envelope.id  # downstream upserts keep the last
    assert status(second.envelope)["join.status"] == "partial"


def test_a_second_different_member_for_one_branch_is_refused() -> None:
    harness = Harness(operator(branches=BRANCHES[:2]))
    harness.run([result("a", "P")])
    other = Msg("results", event("another", SECOND, parent="P", stage="a"))
    (emit,) = harness.run([other])
    assert emit.kind == "dead"
    assert "already has" in emit.reason
    assert "each branch must send one message per key" in emit.reason


def test_members_that_cannot_be_joined_are_dead_letters_with_the_reason() -> None:
    harness = Harness(operator(branches=BRANCHES[:2]))
    (stranger,) = harness.run([result("z", "P")])
    assert stranger.kind == "dead"
    assert "comes from stage 'z', not one of the join's branches (a, b)" in stranger.reason
    (orphan,) = harness.run([Msg("results", event("i", SECOND, stage="a"))])
    assert orphan.reason == "envelope i has no parent_id to join by"
    by_attribute = Harness(operator(by="attribute:study", expect=2))
    (missing,) = by_attribute.run([Msg("results", event("i", SECOND))])
    assert missing.reason == "envelope i has no attribute 'study' to join by"


def test_a_quorum_of_branches_completes_the_join() -> None:
    harness = Harness(operator(branches=BRANCHES, expect=2))
    (emit,) = harness.run([result("c", "P"), result("a", "P")])
    assert status(emit.envelope)["join.status"] == "complete"
    assert status(emit.envelope)["join.missing"] == "b"


def test_a_join_by_attribute_gathers_by_its_value() -> None:
    harness = Harness(operator(by="attribute:study", expect=2))
    one = Msg("results", event("x", SECOND, attributes={"study": "S1"}))
    two = Msg("results", event("y", SECOND, attributes={"study": "S1"}))
    (emit,) = harness.run([one, two])
    assert emit.envelope.id == derive_id("S1", STAGE, 0)


def child(index: int, count: int, t_us: int = SECOND, **more: Any) -> Msg:
    """Child ``index`` of the split of ``P``, itself a child of a split of ``R``."""
    frames = [("R", 0, 2), ("P", index, count)]
    ident = derive_id("P", "split", index)
    return Msg("results", event(ident, t_us, parent="P", frames=frames, **more))


def test_a_fanout_join_waits_for_the_frame_count_and_pops_the_frame() -> None:
    harness = Harness(operator(by="fanout"))
    assert harness.run([child(2, 3, label="two"), child(0, 3, label="zero")]) == []
    (emit,) = harness.run([child(1, 3, label="one")])
    out = emit.envelope
    assert emit.kind == "out"
    assert [p.label for p in out.predictions] == ["zero", "one", "two"]
    assert [(f.parent_id, f.index, f.count) for f in out.fanout] == [("R", 0, 2)]
    assert out.parent_id == "P"
    assert out.id == derive_id("P", STAGE, 0)
    assert status(out)["join.members"] == "3"


def test_a_failed_or_missing_child_is_named_by_its_index() -> None:
    harness = Harness(operator(by="fanout", mode="outer"))
    dead = child(1, 4, failed_at="classify")
    dead = Msg("failures", dead.env)
    assert harness.run([child(0, 4), dead]) == []
    (emit,) = harness.run(quiet(7 * SECOND))
    assert status(emit.envelope) == {
        "join.status": "partial",
        "join.members": "2",
        "join.missing": "2,3",
        "join.failed": "1",
    }
    assert not emit.envelope.HasField("error")


def test_a_child_without_a_frame_cannot_join_by_fanout() -> None:
    (emit,) = Harness(operator(by="fanout")).run([result("a", "P")])
    assert emit.kind == "dead"
    assert "has no fan-out frame to join by" in emit.reason


# --- properties -------------------------------------------------------------------

SPECS = [
    {"branches": BRANCHES},
    {"branches": BRANCHES, "expect": 2, "mode": "outer"},
    {"expect": 3, "mode": "outer"},
    {"by": "fanout"},
    {"by": "fanout", "mode": "outer", "lateness_ms": 2_000},
    {"by": "root_id", "expect": 2},
    {"by": "attribute:group", "expect": 3, "mode": "outer"},
]


@st.composite
def join_runs(draw: st.DrawFn, duplicates: bool = True) -> tuple[dict[str, Any], list[Step]]:
    """A spec, and results and failures of three branches for a few inputs, in any
    order, with idle calls now and then."""
    spec = {"timeout_ms": draw(st.integers(1, 8)) * 1_000, **draw(st.sampled_from(SPECS))}
    msgs: list[Msg] = []
    for p in range(draw(st.integers(1, 6))):
        parent, t = f"P{p}", draw(st.integers(0, 20)) * SECOND
        for index, branch in enumerate(BRANCHES):
            more = {"frames": [(parent, index, 3)], "attributes": {"group": parent}}
            fate = draw(st.sampled_from(["ok", "ok", "fail", "none"]))
            if fate != "none":
                make = result if fate == "ok" else failure
                # Members of one join within its timeout of each other, as when they
                # share their input's event time (see the reopening test).
                jitter = draw(st.integers(0, spec["timeout_ms"] * 1_000 - 1))
                msg = make(branch, parent, t + jitter, **more)
                msg.env.root_id = "root-" + parent
                msgs.append(msg)
    shuffled: list[Msg] = list(draw(st.permutations(msgs)))
    steps: list[Step] = [*(with_duplicates(draw, shuffled) if duplicates else shuffled)]
    for _ in range(draw(st.integers(0, 3))):
        idle = Idle(draw(st.sampled_from(TOPICS)), draw(st.integers(0, 30 * SECOND)))
        steps.insert(draw(st.integers(0, len(steps))), idle)
    return spec, [*steps, *quiet(END_OF_TIME)]


@settings(max_examples=300, deadline=None)
@given(run=join_runs(duplicates=False))
def test_every_member_is_joined_late_or_refused(run: tuple[dict[str, Any], list[Step]]) -> None:
    spec, steps = run
    emits = Harness(operator(**spec)).run(steps)
    outputs = joined(emits)
    accounted = sum(int(out.attributes["join.members"]) for out in outputs)
    accounted += sum(1 for e in emits if e.kind in ("late", "dead") and e.envelope not in outputs)
    assert accounted == sum(1 for s in steps if isinstance(s, Msg))
    assert all(e.reason for e in emits if e.kind != "out")
    assert len({out.id for out in outputs}) == len(outputs)


@settings(max_examples=200, deadline=None)
@given(run=join_runs())
def test_the_same_messages_in_the_same_order_give_the_same_outputs(
    run: tuple[dict[str, Any], list[Step]],
) -> None:
    spec, steps = run
    first = run_plain(lambda: operator(**spec), steps)
    again = run_plain(lambda: operator(**spec), steps)
    assert first.signatures() == again.signatures()
    # All closed and forgotten at the end (a run with no event has no clock either).
    assert set(first.values) <= {CLOCK_KEY}


@settings(max_examples=300, deadline=None)
@given(run=join_runs(), data=st.data())
def test_a_crash_and_restart_from_the_committed_state_gives_the_same_outputs(
    run: tuple[dict[str, Any], list[Step]], data: st.DataObject
) -> None:
    spec, steps = run
    last = len(steps) - 1
    commits = sorted(data.draw(st.sets(st.integers(0, last))))
    crash = data.draw(st.integers(0, last))
    plain = run_plain(lambda: operator(**spec), steps)
    crashed = run_with_crash(lambda: operator(**spec), steps, commits, crash)
    assert crashed.signatures() == plain.signatures()
    assert crashed.values == plain.values
