"""Continuous retraining on SQLite and PostgreSQL: the labelled records a learner gets,
when a new version is learnt, what is registered and audited, that the challenger it
replaces is judged first, the trainer in a pipeline file, and the shadow step that
waits for its alias."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferstream.application import find_model
from inferstream.apps.filedrop import APP
from inferstream.apps.filedrop.learn import fit_shapes
from inferstream.apps.filedrop.shapes import png, shapes
from inferstream.blobs import BlobStore, LocalBlobStore
from inferstream.envelope import ModelRole, new_envelope, to_tensor
from inferstream.errors import ConfigError
from inferstream.pipeline import RetrainSpec, load_pipeline
from inferstream.registry import ModelRegistry
from inferstream.retraining import (
    TRAINER_ACTOR,
    Example,
    Trained,
    count_labelled,
    labelled_examples,
    retrain_round,
    run_trainer,
)
from inferstream.store import Feedback, ResultRow, ResultsStore

FOLDER = find_model("shapes")


def _records(
    store: ResultsStore, blobs: BlobStore, tenant: str, count: int, seed: int
) -> list[Any]:
    """``count`` stored records of dropped images (each image in the blob store)."""
    made, rows = list(shapes(count, seed)), []
    for i, shape in enumerate(made):
        data = png(shape.image)
        digest = blobs.put(data, tenant).sha256
        rows.append(ResultRow(
            id=f"{tenant}-{shape.name}", tenant=tenant, label="circle", confidence=0.5,
            scores={}, model_name="shapes", model_version="1", created_at_us=i,
            ingested_at_us=i, stored_at_us=i, latency_ms=1.0, app="filedrop",
            subject=shape.name, head="shape",
            attributes={"name": shape.name, "blob_sha256": digest},
        ))  # fmt: skip
    store.write_batch(results=rows, predictions=[r.champion() for r in rows])
    return made


def _label(store: ResultsStore, tenant: str, made: Sequence[Any]) -> None:
    store.add_feedback_batch([
        Feedback(tenant, "filedrop", s.name, "shape", s.kind, "test", 1) for s in made
    ])  # fmt: skip


@pytest.fixture
def world(store_url: str, tmp_path: Path) -> Any:
    store = ResultsStore(store_url)
    registry = ModelRegistry(store, LocalBlobStore(tmp_path / "blobs"))
    registry.adopt_shipped("shapes", "champion")
    yield store, registry
    store.close()


class Recording:
    """The application's learner, remembering what it was given."""

    def __init__(self) -> None:
        self.calls: list[list[Example]] = []

    def __call__(
        self, examples: Sequence[Example], blobs: BlobStore, *, name: str, version: str
    ) -> Trained:
        self.calls.append(list(examples))
        return fit_shapes(examples, blobs, name=name, version=version)


def test_a_challenger_is_learnt_once_enough_labels_are_new_and_the_old_one_judged_first(
    world: Any,
) -> None:
    store, registry = world
    made = _records(store, registry.blobs, "farm-a", 260, seed=3)
    spec = RetrainSpec(model="shapes", learner="shapes", min_new_labels=100)
    learner = Recording()

    def run(judge: Any = lambda: None) -> str:
        return retrain_round(registry, spec, learner, app=APP, tenants=["farm-a"], judge=judge)

    _label(store, "farm-a", made[:60])
    assert "60 labelled records; retrains at 100" in run() and not learner.calls
    _label(store, "farm-a", made[60:120])
    assert "registered r1 as @challenger" in run()
    (given,) = learner.calls
    assert len(given) == 120 and {e.subject for e in given} == {s.name for s in made[:120]}
    truth = {s.name: s.kind for s in made}
    assert all(e.label == truth[e.subject] for e in given)
    r1 = registry.resolve("shapes", "challenger")
    assert r1.version == "r1" and r1.info["trained_on"]["labels"] == 120
    assert r1.info["trained_on"]["tenants"] == ["farm-a"]
    assert r1.info["trained_on"]["holdout_accuracy"] > 0.7  # the shipped one: about 0.63
    assert registry.resolve("shapes", "champion").version == "1"  # the policy's to move
    trail = [(e.action, e.actor, e.to_version) for e in registry.history("shapes")[:2]]
    assert trail == [("alias", TRAINER_ACTOR, "r1"), ("register", TRAINER_ACTOR, "r1")]
    assert "retrained by shapes on 120 labelled records" in registry.history("shapes")[0].reason

    _label(store, "farm-a", made[120:200])  # 200 < 120 + 100: not yet
    assert "retrains at 220" in run() and len(learner.calls) == 1
    _label(store, "farm-a", made[200:])
    judged: list[str] = []
    run(lambda: judged.append(registry.resolve("shapes", "challenger").version))
    assert judged == ["r1"]  # judged while it still held the alias
    assert registry.resolve("shapes", "challenger").version == "r2"
    assert len(learner.calls[-1]) == 260


def test_only_labelled_records_of_the_application_and_the_tenants_named_are_learnt(
    world: Any,
) -> None:
    store, registry = world
    ours = _records(store, registry.blobs, "farm-a", 20, seed=4)
    theirs = _records(store, registry.blobs, "farm-b", 20, seed=5)
    _label(store, "farm-a", ours[:10])
    _label(store, "farm-b", theirs)
    store.add_feedback("farm-a", ours[15].name, "circle", app="eggs", head="shape")  # not ours
    examples = labelled_examples(store, ["farm-a"], app="filedrop", head="shape")
    assert [e.subject for e in examples] == sorted(s.name for s in ours[:10])
    assert all(e.tenant == "farm-a" for e in examples)
    both = labelled_examples(store, ["farm-a", "farm-b"], app="filedrop", head="shape")
    assert len(both) == 30
    # What a round that is not due counts, without reading the records.
    assert count_labelled(store, ["farm-a", "farm-b"], app="filedrop", head="shape") == 30
    assert count_labelled(store, ["farm-a"], app="filedrop", head="shape") == 10
    image = both[0].input_bytes(registry.blobs)
    assert image.startswith(b"\x89PNG")


def _pipeline(tmp_path: Path, store_url: str, extra: str) -> Path:
    path = tmp_path / "drop.yaml"
    path.write_text(f"""
name: drop
app: filedrop
bus: sqlite:///{tmp_path / "bus.db"}
store: {store_url}
blobs: file://{tmp_path / "blobs"}
topics: {{drop.images: 1}}
stages:
  - name: classify
    input: drop.images
    steps:
      - prepare
      - {{step: classify, model: shapes@challenger, role: shadow, until_set: pass}}
      - {{step: classify, model: shapes@champion}}
      - store_results
{extra}""")
    return path


def test_the_trainer_of_a_pipeline_file_retrains_and_runs_its_policy(
    world: Any, tmp_path: Path
) -> None:
    from inferstream.supervisor import pipeline_children

    store, registry = world
    url = store.engine.url.render_as_string(hide_password=False)
    path = _pipeline(
        tmp_path,
        url,
        """
retraining: [{model: shapes, learner: shapes, min_new_labels: 50, labels_from: [farm-a]}]
promotion: [{model: shapes, min_labels: 50, labels_from: [farm-a]}]
""",
    )
    spec = load_pipeline(path)
    assert [c.name for c in pipeline_children(spec)] == ["classify-0", "trainer"]
    _label(store, "farm-a", _records(store, registry.blobs, "farm-a", 80, seed=6))
    said: list[str] = []
    run_trainer(spec, once=True, say=said.append)
    assert any("shapes: no @challenger to compare" in line for line in said)
    assert any("registered r1 as @challenger" in line for line in said)
    # Stopped from outside (SIGTERM in the process): it returns at once.
    stop = threading.Event()
    stop.set()
    run_trainer(spec, stop=stop, say=said.append)


def test_retraining_is_checked_when_the_file_loads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    for section, error in (
        ("retraining: {model: shapes}", "a list of models"),
        ("retraining: [{model: shapes}]", "names its model and the application's learner"),
        ("retraining: [{model: shapes, learner: nope}]", "learners: shapes"),
        ("retraining: [{model: shapes, learner: shapes, every_s: 0}]", "every_s"),
        ("retraining: [{model: shapes, learner: shapes, min_new: 3}]", "min_new"),
    ):
        with pytest.raises(ConfigError, match=error):
            load_pipeline(_pipeline(tmp_path, url, section))


def test_a_shadow_waits_for_its_alias_and_an_acting_step_may_not(tmp_path: Path) -> None:
    from inferstream.serving import FollowingClassifyStep, ShadowUntilSetStep, classify_step
    from inferstream.steps import StepContext

    url, blobs = f"sqlite:///{tmp_path / 'r.db'}", LocalBlobStore(tmp_path / "b")
    registry = ModelRegistry(ResultsStore(url), blobs)
    context = StepContext(pipeline="p", stage="classify", store_url=url, blobs=blobs, app=APP)
    shadow = classify_step(context, model="shapes@challenger", role="shadow", until_set="pass",
                           refresh_s=0.0)  # fmt: skip
    assert isinstance(shadow, ShadowUntilSetStep)
    assert registry.versions("shapes") == []  # waiting never takes the shipped model
    env = new_envelope(b"", "application/x-tensor", attributes={"name": "a"})
    env.payload.tensor.CopyFrom(to_tensor(np.zeros((1, 32, 32), np.float32)))
    assert shadow.process([env]) == [env]  # untouched
    with pytest.raises(ConfigError, match="until_set: pass is for a shadow step"):
        classify_step(context, model="shapes@champion", until_set="pass")
    assert FOLDER is not None
    registry.register_files(FOLDER / "shapes.onnx", actor="ops")
    registry.set_alias("shapes", "challenger", "1", actor="ops", reason="a first challenger")
    for _ in range(200):  # idle: the worker calls begin_batch after empty polls too
        shadow.begin_batch({})
        if shadow.scoring is not None:
            break
        threading.Event().wait(0.01)
    assert isinstance(shadow.scoring, FollowingClassifyStep)
    (scored,) = shadow.process([env])
    assert isinstance(scored, type(env))
    assert [(p.model_version, p.role) for p in scored.predictions] == [
        ("1", ModelRole.MODEL_ROLE_SHADOW)
    ]
    (switch,) = registry.switches("shapes")
    assert (switch.alias, switch.from_version, switch.to_version) == ("challenger", "", "1")
    shadow.close()
    registry.store.close()
