"""Routing: broadcast, routes by predicate, several inputs, start position, fan-out frames."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flow_testing import drain_topic, produce_envelopes, running, wait_for
from pipeline_steps import ParityLabel, Split

from inferstream.builtin_steps import Passthrough
from inferstream.bus import Bus, open_bus
from inferstream.envelope import Envelope, ModelRole, Prediction, new_envelope, parse
from inferstream.errors import ConfigError
from inferstream.routing import DROP, Router, parse_predicate, parse_routes
from inferstream.steps import Step
from inferstream.worker import StageWorker


@pytest.fixture
def local_bus(tmp_path: Path) -> Iterator[Bus]:
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    yield bus
    bus.close()


def labelled(label: str, score: float, *, head: str = "", shadow: bool = False) -> Envelope:
    env = new_envelope(b"x", "image/png", source="cam/1", attributes={"site": "north"})
    role = ModelRole.MODEL_ROLE_SHADOW if shadow else ModelRole.MODEL_ROLE_CHAMPION
    env.predictions.append(Prediction(label=label, scores={label: score}, role=role, head=head))
    return env


def test_predicates_read_the_acting_prediction_attributes_and_source() -> None:
    where = "test"
    sure_female = parse_predicate({"label": "female", "min_confidence": 0.9}, where)
    assert sure_female.holds(labelled("female", 0.95))
    assert not sure_female.holds(labelled("female", 0.8))
    assert not sure_female.holds(labelled("male", 0.99))
    unsure = parse_predicate({"max_confidence": 0.6}, where)
    assert unsure.holds(labelled("male", 0.55)) and not unsure.holds(labelled("male", 0.6))
    # A shadow model's prediction is never acted on, so it is never routed on either.
    shadow_first = labelled("female", 0.99, shadow=True)
    shadow_first.predictions.append(Prediction(label="male", scores={"male": 0.7}))
    assert not sure_female.holds(shadow_first)
    by_head = parse_predicate({"head": "fertile", "label": "yes"}, where)
    two_heads = labelled("female", 0.9, head="sex")
    two_heads.predictions.append(Prediction(label="yes", scores={"yes": 0.8}, head="fertile"))
    assert by_head.holds(two_heads) and not by_head.holds(labelled("yes", 0.9, head="sex"))
    site = parse_predicate({"attributes": {"site": ["north", "east"]}, "source": "cam/1"}, where)
    assert site.holds(labelled("x", 1.0))
    assert not parse_predicate({"attributes": {"site": "south"}}, where).holds(labelled("x", 1))
    assert parse_predicate({"attributes": {"site": "*"}}, where).holds(labelled("x", 1.0))
    assert not parse_predicate({"attributes": {"zone": "*"}}, where).holds(labelled("x", 1.0))


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([{"when": {"lable": "x"}, "to": "a"}], "unknown condition(s) ['lable']"),
        (
            [{"when": {"min_confidence": 2}, "to": "a"}],
            "min_confidence must be a number from 0 to 1",
        ),
        ([{"otherwise": "b"}, {"when": {}, "to": "a"}], "'otherwise' must be the last route"),
        ([{"when": {"label": "x"}}], "exactly 'when' and 'to'"),
        ([{"when": {"label": "x"}, "to": []}], "to must be a topic name or a list"),
        ([{"when": {"attributes": {"site": None}}, "to": "a"}], "needs a value, a list or '*'"),
    ],
)
def test_bad_routes_are_refused_with_what_to_write(routes: list, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_routes(routes, "pipeline.yaml:3")


def worker(
    bus: Bus, inputs: list[str], router: Router, steps: list[Step], **kw: object
) -> StageWorker:
    return StageWorker(
        bus, pipeline="p", stage="s", inputs=inputs, router=router, steps=steps,
        max_batch=16, max_wait_s=0.01, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def numbered(n: int) -> list[Envelope]:
    return [
        new_envelope(b"x", "text/plain", key=f"k{i}", attributes={"n": str(i)}) for i in range(n)
    ]


def test_routes_send_each_output_to_its_topics_and_dead_letter_the_rest(local_bus: Bus) -> None:
    for topic in ("in", "in.dlq", "even", "odd", "all"):
        local_bus.create_topic(topic, 2)
    routes, _ = parse_routes(
        [
            {"when": {"label": "even"}, "to": ["even", "all"]},
            {"when": {"attributes": {"n": "1"}}, "to": "odd"},
        ],
        "test",
    )
    inputs = numbered(20)
    produce_envelopes(local_bus, "in", inputs)
    with running(worker(local_bus, ["in"], Router(routes=routes), [ParityLabel(0)])):
        even = drain_topic(local_bus, "even", 10)
        every = drain_topic(local_bus, "all", 10)
        odd = drain_topic(local_bus, "odd", 1)
        letters = drain_topic(local_bus, "in.dlq", 9)
    n_of = {e.id: int(e.attributes["n"]) for e in inputs}
    assert sorted(n_of[parse(m.value).parent_id] for m in even) == list(range(0, 20, 2))
    assert {m.value for m in every} == {m.value for m in even}
    assert [n_of[parse(m.value).parent_id] for m in odd] == [1]
    # The odd outputs no route takes are dead letters that say why, never dropped.
    dead = [parse(m.value) for m in letters]
    assert sorted(n_of[d.parent_id] for d in dead) == [3, 5, 7, 9, 11, 13, 15, 17, 19]
    assert all("matches no route" in d.error.message for d in dead)


def test_otherwise_drop_discards_on_purpose_and_broadcast_copies_to_every_output(
    local_bus: Bus,
) -> None:
    for topic in ("in", "in.dlq", "even", "a", "b"):
        local_bus.create_topic(topic, 1)
    routes, otherwise = parse_routes(
        [{"when": {"label": "even"}, "to": "even"}, {"otherwise": "drop"}], "test"
    )
    produce_envelopes(local_bus, "in", numbered(10))
    with running(
        worker(local_bus, ["in"], Router(routes=routes, otherwise=otherwise), [ParityLabel(0)]),
    ):
        assert len(drain_topic(local_bus, "even", 5)) == 5
        assert wait_for(lambda: sum(p.lag for p in local_bus.partitions("in", "p.s")) == 0)
    assert sum(p.high for p in local_bus.partitions("in.dlq")) == 0
    broadcast = StageWorker(
        local_bus, pipeline="p", stage="copy", inputs=["in"], router=Router(outputs=("a", "b")),
        steps=[Passthrough()], max_batch=4, max_wait_s=0.01,
    )  # fmt: skip
    with running(broadcast):
        a, b = drain_topic(local_bus, "a", 10), drain_topic(local_bus, "b", 10)
    assert len(a) == 10 and sorted(m.value for m in a) == sorted(m.value for m in b)


def test_a_stage_reads_several_topics_and_dead_letters_to_each_ones_dlq(local_bus: Bus) -> None:
    for topic in ("left", "right", "left.dlq", "right.dlq", "out"):
        local_bus.create_topic(topic, 2)
    left, right = numbered(6), numbered(4)
    right[0].attributes["n"] = "not a number"
    produce_envelopes(local_bus, "left", left)
    produce_envelopes(local_bus, "right", right)
    with running(worker(local_bus, ["left", "right"], Router(outputs=("out",)), [ParityLabel(0)])):
        out = drain_topic(local_bus, "out", 9)
        letters = drain_topic(local_bus, "right.dlq", 1)
    assert {parse(m.value).parent_id for m in out} == {e.id for e in left + right[1:]}
    assert [parse(m.value).id for m in letters] == [right[0].id]
    assert sum(p.high for p in local_bus.partitions("left.dlq")) == 0


def test_a_new_group_starting_at_latest_skips_the_retained_log(local_bus: Bus) -> None:
    for topic in ("in", "in.dlq", "out"):
        local_bus.create_topic(topic, 1)
    old = numbered(5)
    produce_envelopes(local_bus, "in", old)
    late_joiner = worker(
        local_bus, ["in"], Router(outputs=("out",)), [Passthrough()], start="latest"
    )
    sent: list[Envelope] = []
    with running(late_joiner):
        # Whatever is sent after the group joined comes out; keep sending until it does.
        def one_more_arrived() -> bool:
            sent.extend(numbered(1))
            produce_envelopes(local_bus, "in", sent[-1:])
            return bool(drain_topic(local_bus, "out", 1, timeout_s=0.2))

        assert wait_for(one_more_arrived)
        last = numbered(3)
        produce_envelopes(local_bus, "in", last)
        parents: set[str] = set()

        def last_arrived() -> bool:
            out = drain_topic(local_bus, "out", 10**6, timeout_s=0.3)
            parents.update(parse(m.value).parent_id for m in out)
            return {e.id for e in last} <= parents

        assert wait_for(last_arrived)
    assert parents.isdisjoint(e.id for e in old)
    assert {e.id for e in last} <= parents <= {e.id for e in sent + last}


def test_fan_out_children_carry_their_place_among_their_siblings(local_bus: Bus) -> None:
    for topic in ("in", "in.dlq", "parts"):
        local_bus.create_topic(topic, 2)
    inputs = numbered(4)
    inputs[1].attributes["parts"] = "1"
    produce_envelopes(local_bus, "in", inputs)
    with running(worker(local_bus, ["in"], Router(outputs=("parts",)), [Split(3), Passthrough()])):
        parts = [parse(m.value) for m in drain_topic(local_bus, "parts", 10)]
    assert len(parts) == 10 and len({p.id for p in parts}) == 10
    for child in parts:
        (frame,) = child.fanout
        assert frame.parent_id == child.parent_id and frame.stage == "s"
        assert frame.count == (1 if child.parent_id == inputs[1].id else 3)
        assert frame.index == int(child.attributes["part"])
        assert child.root_id == next(e.root_id for e in inputs if e.id == child.parent_id)


def test_a_sink_stage_ends_its_outputs_there_and_dead_letters_none(local_bus: Bus) -> None:
    for topic in ("in", "in.dlq"):
        local_bus.create_topic(topic, 1)
    assert Router().topics(labelled("x", 1.0)) == (DROP,)
    produce_envelopes(local_bus, "in", numbered(8))
    with running(worker(local_bus, ["in"], Router(), [Passthrough()])):
        assert wait_for(lambda: sum(p.lag for p in local_bus.partitions("in", "p.s")) == 0)
    assert sum(p.high for p in local_bus.partitions("in.dlq")) == 0


def test_a_step_runs_only_on_what_its_when_and_unless_take(tmp_path: Path) -> None:
    """``when:``/``unless:`` on a step of a pipeline file: the others pass it unchanged,
    in their places in the batch."""
    from inferstream.pipeline.parse import parse_pipeline
    from inferstream.runner import build_steps

    raw = {
        "name": "cond", "topics": {"a": 1},
        "stages": [{"name": "s", "input": "a", "steps": [
            {"step": "tag", "seen": "yes", "when": {"attributes": {"kind": ["x", "y"]}},
             "unless": {"attributes": {"skip": "*"}}},
        ]}],
    }  # fmt: skip
    spec = parse_pipeline(raw, tmp_path / "cond.yaml")
    (step,) = build_steps(spec, spec.stages[0], "w")
    kinds = [{"kind": "x"}, {"kind": "z"}, {"kind": "y", "skip": "1"}, {"kind": "y"}]
    batch = [new_envelope(b"", "text/plain", attributes=a) for a in kinds]
    out = step.process(batch)
    assert [isinstance(o, Envelope) and o.attributes.get("seen") for o in out] == [
        "yes", None, None, "yes"
    ]  # fmt: skip
    assert out[1] is batch[1] and out[2] is batch[2]
    bad = {**raw, "stages": [{**raw["stages"][0], "steps": [{"step": "tag", "when": "x"}]}]}
    with pytest.raises(ConfigError, match="step 'tag' when: 'when' must be a mapping"):
        parse_pipeline(bad, tmp_path / "bad.yaml")
