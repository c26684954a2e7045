"""Promotion on late labels: the paired comparison, the policy, and the alias moving
only when the policy's conditions hold (labels arriving in two waves), then a rollback;
every decision in the audit log with its figures. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from test_registry import shipped

from inferstream.blobs import LocalBlobStore
from inferstream.cli import main
from inferstream.promotion import (
    Policy,
    apply_decision,
    calibration_error,
    compare,
    mcnemar_exact,
    wilson,
)
from inferstream.registry import ModelRegistry
from inferstream.store import ResultRow, ResultsStore

LABELS = ("female", "male", "not_developing")
RECORDS = 400


def test_the_statistics_match_known_values() -> None:
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 12) == pytest.approx(0.03515625)  # binomial, n=15, k<=3, two-sided
    low, high = wilson(80, 100)
    assert low == pytest.approx(0.7112, abs=1e-3) and high == pytest.approx(0.8666, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)
    # Calibration: confident and right as often as it says, 0; 0.9 sure but right half
    # the time, 0.4; an empty set has none.
    assert calibration_error([(0.9, True)] * 9 + [(0.9, False)]) == pytest.approx(0.0)
    assert calibration_error([(0.9, True), (0.9, False)]) == pytest.approx(0.4)
    assert calibration_error([(0.25, False), (0.95, True)]) == pytest.approx(0.15)
    assert calibration_error([]) is None


def _truth(i: int) -> str:
    return LABELS[i % 2]


def _wrong(label: str) -> str:
    return "male" if label == "female" else "female"


def _seed(store: ResultsStore, tenant: str) -> None:
    """400 eggs scored by 1.0.0 (acting) and 1.1.0 (shadow): 1.0.0 is right on 300,
    1.1.0 on 360; they disagree on 100 records (20 only 1.0.0 right, 80 only 1.1.0)."""
    rows, preds = [], []
    for i in range(RECORDS):
        truth = _truth(i)
        k = i % 20  # per 20: 1 only 1.0.0 right, 4 only 1.1.0 right, 1 both wrong
        a_right, b_right = k == 0 or k > 5, 1 <= k <= 4 or k > 5
        row = ResultRow(
            id=f"{tenant}-r{i}", tenant=tenant, label=truth if a_right else _wrong(truth),
            confidence=0.9, scores={}, model_name="egg_sexing", model_version="1.0.0",
            created_at_us=i, ingested_at_us=i, stored_at_us=i, latency_ms=1.0, app="eggs",
            subject=f"EGG-{i:04d}", group="T", source="S", head="sex",
        )  # fmt: skip
        shadow = dataclasses.replace(
            row.champion(), role="shadow", model_version="1.1.0",
            label=truth if b_right else _wrong(truth),
        )  # fmt: skip
        rows.append(row)
        preds += [row.champion(), shadow]
    store.write_batch(results=rows, predictions=preds)


def _label(store: ResultsStore, tenant: str, upto: int) -> None:
    for i in range(upto):
        store.add_feedback(tenant, f"EGG-{i:04d}", _truth(i), app="eggs", head="sex")


@pytest.fixture
def world(store_url: str, tmp_path: Path) -> Any:
    store = ResultsStore(store_url)
    registry = ModelRegistry(store, LocalBlobStore(tmp_path / "blobs"))
    graph, info = shipped()
    for version in ("1.0.0", "1.1.0"):
        registry.register(graph, {**info, "version": version}, actor="ops")
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="ops", reason="first")
    registry.set_alias("egg_sexing", "challenger", "1.1.0", actor="ops", reason="retrained")
    yield store, registry
    store.close()


def _compare(store: ResultsStore, tenant: str) -> Any:
    return compare(store, [tenant], app="eggs", head="sex", name="egg_sexing",
                   champion="1.0.0", challenger="1.1.0")  # fmt: skip


def test_labels_arrive_late_and_the_alias_moves_only_when_the_policy_holds(world: Any) -> None:
    store, registry = world
    tenant = "farm-a"
    _seed(store, tenant)
    policy = Policy(min_labels=200, alpha=0.05)
    # First wave of hatch results: 100 labels, too few.
    _label(store, tenant, 100)
    first = _compare(store, tenant)
    assert first.labelled == 100
    assert apply_decision(registry, first, policy, actor="ops")[0] == "wait"
    assert registry.resolve("egg_sexing", "champion").version == "1.0.0"
    # A policy asking for a 30-point gain keeps the champion even with every label.
    _label(store, tenant, RECORDS)
    full = _compare(store, tenant)
    assert (full.labelled, full.champion_correct, full.challenger_correct) == (400, 300, 360)
    assert (full.only_champion, full.only_challenger) == (20, 80)
    assert full.p_value < 1e-8
    assert sum(n for n, _, _ in full.per_class.values()) == 400
    # Both always 0.9 sure: the champion (right 3 times in 4) is over-confident by 0.15.
    assert full.champion_calibration == pytest.approx(0.15)
    assert full.challenger_calibration == pytest.approx(0.0)
    demanding = Policy(min_labels=200, alpha=0.05, margin=0.3)
    assert apply_decision(registry, full, demanding, actor="ops")[0] == "keep"
    assert registry.resolve("egg_sexing", "champion").version == "1.0.0"
    # The policy holds: promoted, with its figures in the audit log.
    decision, _ = apply_decision(registry, full, policy, actor="ops")
    assert decision == "promote" and registry.resolve("egg_sexing", "champion").version == "1.1.0"
    trail = registry.history("egg_sexing")
    assert [e.action for e in trail[:3]] == ["promote", "keep", "wait"]
    assert "McNemar p=" in trail[0].reason and "400 labelled records" in trail[0].reason
    assert "min 200 labels" in trail[0].reason
    # And a rollback puts the old champion back.
    back = registry.rollback("egg_sexing", "champion", actor="ops", reason="hatchery complaint")
    assert back.version == "1.0.0"


def test_the_evaluate_command_reports_and_decides(
    world: Any, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, registry = world
    _seed(store, "farm-b")
    _label(store, "farm-b", RECORDS)
    from inferstream.apps.eggs import APP

    where = ["--store", store_url, "--blobs", f"file://{tmp_path / 'blobs'}"]
    command = ["models", "evaluate", str(APP.pipeline_path()), "egg_sexing", *where,
               "--labels-from", "farm-b"]  # fmt: skip
    assert main([*command, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decision"] == "promote" and report["applied"] is False
    assert report["labelled"] == 400 and report["only_challenger"] == 80
    assert registry.resolve("egg_sexing", "champion").version == "1.0.0"  # only reported
    assert main([*command, "--decide"]) == 0
    out = capsys.readouterr().out
    assert "decision: promote: better by 0.150" in out and "female" in out
    assert registry.resolve("egg_sexing", "champion").version == "1.1.0"


def test_the_pipelines_chores_apply_its_promotion_policy(world: Any, tmp_path: Path) -> None:
    from inferstream.pipeline import load_pipeline
    from inferstream.runner import housekeep

    store, registry = world
    _seed(store, "farm-c")
    path = tmp_path / "promote.yaml"
    path.write_text(f"""
name: promote
app: eggs
bus: sqlite:///{tmp_path / "bus.db"}
store: {store.engine.url.render_as_string(hide_password=False)}
blobs: file://{tmp_path / "blobs"}
topics:
  scans: 1
stages:
  - name: store
    input: scans
    steps: [store_results]
promotion:
  - {{model: egg_sexing, min_labels: 200, labels_from: [farm-c]}}
""")
    spec = load_pipeline(path)
    _label(store, "farm-c", 100)
    assert any("egg_sexing: wait" in line for line in housekeep(spec))
    housekeep(spec)  # the same figures: said once in the audit log, not every minute
    assert [e.action for e in registry.history("egg_sexing")].count("wait") == 1
    _label(store, "farm-c", RECORDS)
    assert any("egg_sexing: promote" in line for line in housekeep(spec))
    assert registry.resolve("egg_sexing", "champion").version == "1.1.0"
    (promoted,) = [e for e in registry.history("egg_sexing") if e.action == "promote"]
    assert promoted.actor == "inferstream (promotion policy)"
    # The new champion (0.900 on 400, interval up to 0.926) under a floor of 0.95: demoted.
    strict = dataclasses.replace(spec.promotions[0], demote_below=0.95)
    lines = housekeep(dataclasses.replace(spec, promotions=(strict,)))
    assert any("demoted 1.1.0 -> 1.0.0" in line for line in lines)
    assert registry.resolve("egg_sexing", "champion").version == "1.0.0"
    assert "below the floor 0.95" in registry.history("egg_sexing")[0].reason


def test_a_promotion_policy_is_checked_when_the_file_loads(tmp_path: Path) -> None:
    from inferstream.errors import ConfigError
    from inferstream.pipeline import load_pipeline

    base = "name: p\nstages:\n  - {name: s, input: a, steps: [passthrough]}\ntopics: {a: 1}\n"
    for policy, error in (
        ("promotion: {model: x}", "a list of policies"),
        ("promotion: [{min_labels: 3}]", "names its model"),
        ("promotion: [{model: x, alpha: 2}]", "alpha must be a number from 0.0 to 1.0"),
        ("promotion: [{model: x, min_label: 3}]", "min_label"),
    ):
        path = tmp_path / "p.yaml"
        path.write_text(base + policy + "\n")
        with pytest.raises(ConfigError, match=error):
            load_pipeline(path)
