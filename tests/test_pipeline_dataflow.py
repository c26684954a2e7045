"""Pipeline files with routes, several inputs and outputs, joins and windows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferstream.cli import main
from inferstream.errors import ConfigError
from inferstream.pipeline import load_pipeline, wiring_warnings
from inferstream.routing import DROP

FLOW = """
name: flow
bus: sqlite:///{tmp}/bus.db
store: sqlite:///{tmp}/results.db
topics:
  photos: 2
stages:
  - name: split
    input: photos
    start: latest
    steps: [passthrough]
    output: [crops, audit]
  - name: grade-a
    input: crops
    steps: [passthrough]
    routes:
      - when: {{label: sick, min_confidence: 0.5}}
        to: grades.a
      - when: {{attributes: {{site: [north, south]}}}}
        to: [grades.a, review]
      - otherwise: drop
  - name: grade-b
    input: crops
    steps: [passthrough]
    output: grades.b
  - name: join
    input: [grades.a, grades.b, crops.dlq]
    join: {{by: parent_id, branches: [grade-a, grade-b], timeout_ms: 30000, mode: outer}}
    output: leaves
  - name: per-minute
    input: leaves
    window: {{kind: tumbling, size_ms: 60000, lateness_ms: 5000, keep: count, idle_ms: 250}}
    steps: [passthrough]
    output: minutes
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text.format(tmp=tmp_path))
    return path


def test_routes_inputs_outputs_joins_and_windows_load(tmp_path: Path) -> None:
    spec = load_pipeline(write(tmp_path, FLOW))
    split, grade_a, _, join, window = spec.stages
    assert split.outputs == ("crops", "audit") and split.start == "latest"
    assert [r.to for r in grade_a.routes] == [("grades.a",), ("grades.a", "review")]
    assert grade_a.otherwise == (DROP,) and grade_a.router.all_topics() == ("grades.a", "review")
    assert join.inputs == ("grades.a", "grades.b", "crops.dlq") and join.stateful
    assert join.join is not None and join.join.branches == ("grade-a", "grade-b")
    assert join.steps == ()
    assert window.window is not None and window.window.keep == "count"
    assert window.idle_ms == 250 and not split.stateful


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "    output: leaves\n",
            "    output: leaves.late\n",
            "writes 'leaves.late': .dlq and .late topics are the worker's",
        ),
        ("timeout_ms: 30000,", "timeout: 30000,", "unknown join setting 'timeout'"),
        ("kind: tumbling", "kind: rolling", "rolling"),
        ("    start: latest\n", "    start: newest\n", "start must be 'earliest'"),
        ("    output: grades.b\n", "    output: grades.b\n    routes: [{{otherwise: x}}]\n",
         "use 'output'"),
        ("topics:\n  photos: 2\n", "topics:\n  photos: 2\n  grades.b: 1\n",
         "have different partition counts"),
    ],
)  # fmt: skip
def test_dataflow_mistakes_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in FLOW
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_pipeline(write(tmp_path, FLOW.replace(old, new, 1)))


def test_a_join_needs_no_steps_but_a_plain_stage_does(tmp_path: Path) -> None:
    text = FLOW.replace(
        "    steps: [passthrough]\n    output: grades.b\n", "    output: grades.b\n"
    )
    with pytest.raises(ConfigError, match="'grade-b' needs a non-empty list of steps"):
        load_pipeline(write(tmp_path, text))


def test_routes_can_form_a_cycle_and_validate_says_so(tmp_path: Path) -> None:
    text = FLOW.replace("to: [grades.a, review]", "to: [grades.a, photos]")
    with pytest.raises(ConfigError, match="topics form a cycle"):
        load_pipeline(write(tmp_path, text))


def test_cli_validate_shows_operators_and_routes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(write(tmp_path, FLOW))]) == 0
    out = capsys.readouterr().out
    assert "split: photos -> [passthrough] -> crops, audit" in out
    assert "grade-a: crops -> [passthrough] -> routes to grades.a, review" in out
    assert "join: grades.a, grades.b, crops.dlq -> [join by parent_id] -> leaves" in out
    assert "per-minute: leaves -> [tumbling window -> passthrough] -> minutes" in out


def test_validate_warns_of_late_events_no_stage_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(write(tmp_path, FLOW))]) == 0
    err = capsys.readouterr().err
    assert "stage 'per-minute' sends events that come too late to leaves.late" in err
    assert "grades.a.late" in err and "crops.dlq.late" in err


def test_a_stage_keeping_late_events_is_not_asked_to_read_its_own_dead_letters(
    tmp_path: Path,
) -> None:
    keeper = """
  - name: keep-late
    input: [leaves.late, grades.a.late]
    steps: [store_results]
"""
    spec = load_pipeline(write(tmp_path, FLOW + keeper))
    warnings = "\n".join(wiring_warnings(spec))
    assert "sends events that come too late to leaves.late" not in warnings
    assert "too late to grades.a.late" not in warnings
    assert "too late to grades.b.late" in warnings  # still unread
    assert ".late.dlq" not in warnings
