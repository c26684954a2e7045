"""Continuous retraining: a challenger learnt from the labels that arrive, while the
pipeline runs.

A pipeline file that says ``retraining:`` gets a trainer process beside its workers
(``inferstream up`` starts and supervises it; ``inferstream trainer FILE`` runs it
alone). Every ``every_s`` seconds it:

1. gathers the labelled records: the application's records whose subject has feedback
   on the head (one example per subject, its newest record), from ``labels_from`` or
   every tenant;
2. when there are at least ``min_new_labels`` more of them than the newest retrained
   version learnt from, calls the application's *learner* with them. The learner reads
   the inputs back (most often the image from the blob store, by a digest the record
   keeps) and returns an ONNX graph with its metadata;
3. registers the graph as the next version (``r1``, ``r2``, ...; the metadata says how
   many labels it learnt from) and points ``alias`` (``challenger``) at it, both audited
   by :data:`TRAINER_ACTOR`. A shadow ``classify`` step following ``NAME@challenger``
   scores every input with it from its next batch on, without a restart;
4. runs the pipeline's promotion policies (``promotion:``) every round, and again just
   before a new version takes the challenger's alias (so a challenger is judged on
   every label there is before it is replaced): champion and challenger are compared
   on the same subjects, labelled since, and the challenger promoted when the policy's
   conditions hold; the acting step following ``NAME@champion`` then switches between
   batches.

A learner is the application's (``AppSpec.learners``): the platform decides when to
learn, from what, and what happens to the result; the application knows its inputs and
its model. A learner that fails is said in the log and tried again at the next round
with the labels there are then; the champion keeps serving.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import and_, func, select

from inferstream.application import AppSpec, app_named, load_ref
from inferstream.blob_crypto import open_blobs
from inferstream.blobs import BlobStore
from inferstream.envelope import BlobRef, now_us
from inferstream.errors import ConfigError, InferstreamError
from inferstream.pipeline import PipelineSpec, RetrainSpec
from inferstream.registry import ModelRegistry, ModelVersion
from inferstream.store import ResultsStore
from inferstream.store.schema import GLOBAL_OWNER, feedback, records

log = logging.getLogger(__name__)

#: Who the audit log names for versions the trainer registers and aliases it sets.
TRAINER_ACTOR = "inferstream (retraining)"
#: The attribute holding the SHA-256 of a record's input in the blob store.
BLOB_ATTRIBUTE = "blob_sha256"
_RETRAINED = re.compile(r"r([0-9]+)")


@dataclass(frozen=True)
class Example:
    """A labelled record: what the learner learns from."""

    tenant: str
    record_id: str
    subject: str
    #: The truth, from feedback.
    label: str
    #: The record's attributes (the application's, as stored).
    attributes: Mapping[str, Any]

    def input_bytes(self, blobs: BlobStore, attribute: str = BLOB_ATTRIBUTE) -> bytes:
        """The record's input, kept in the blob store under its tenant by digest."""
        digest = str(self.attributes.get(attribute) or "")
        if not digest:
            raise InferstreamError(
                f"record {self.record_id} has no {attribute!r} attribute; the learner cannot "
                "read its input back (declare the attribute and set it at ingest)"
            )
        return blobs.get(BlobRef(uri="", sha256=digest, size=0), self.tenant)


@dataclass(frozen=True)
class Trained:
    """What a learner returns: an ONNX graph and its metadata (labels, input, output,
    input shape; name and version are the trainer's), with figures for the audit log."""

    graph: bytes
    info: dict[str, Any]
    figures: Mapping[str, float] = field(default_factory=dict)


class Learner(Protocol):
    def __call__(
        self, examples: Sequence[Example], blobs: BlobStore, *, name: str, version: str
    ) -> Trained: ...


def count_labelled(store: ResultsStore, tenants: Sequence[str], *, app: str, head: str) -> int:
    """How many subjects have a label: what :func:`labelled_examples` would give, counted
    in the database (a round that is not due reads nothing more)."""
    r, f = records.c, feedback.c
    labelled = records.join(feedback, and_(f.tenant == r.tenant, f.app == r.app,
                                           f.subject == r.subject))  # fmt: skip
    total = 0
    for tenant in tenants:
        stmt = (
            select(func.count(func.distinct(r.subject)))
            .select_from(labelled)
            .where(r.tenant == tenant, r.app == app, f.head == head)
        )
        with store.tenant_transaction(tenant, "count labelled records of") as conn:
            total += int(conn.execute(stmt).scalar_one())
    return total


def labelled_examples(
    store: ResultsStore, tenants: Sequence[str], *, app: str, head: str
) -> list[Example]:
    """One example per labelled subject (its newest record), in a stable order."""
    r, f = records.c, feedback.c
    newest: dict[tuple[str, str], Example] = {}
    for tenant in tenants:
        stmt = (
            select(r.id, r.subject, r.attributes, f.label)
            .join(feedback, and_(f.tenant == r.tenant, f.app == r.app, f.subject == r.subject))
            .where(r.tenant == tenant, r.app == app, f.head == head)
            .order_by(r.subject, r.stored_at_us, r.id)
        )
        with store.tenant_transaction(tenant, "read labelled records of") as conn:
            for record_id, subject, attributes, label in conn.execute(stmt):
                newest[(tenant, subject)] = Example(
                    tenant, record_id, subject, label, dict(attributes or {})
                )
    return [newest[key] for key in sorted(newest)]


def retrained_versions(registry: ModelRegistry, name: str) -> list[ModelVersion]:
    """The versions of ``name`` the trainer registered, oldest first."""
    mine = [
        v
        for v in registry.versions(name)
        if v.owner == GLOBAL_OWNER and v.registered_by == TRAINER_ACTOR
        and _RETRAINED.fullmatch(v.version)
    ]  # fmt: skip
    return sorted(mine, key=lambda v: int(v.version[1:]))


def learnt_from(version: ModelVersion | None) -> int:
    """How many labelled records a retrained version learnt from (0 for none)."""
    if version is None:
        return 0
    trained_on = version.info.get("trained_on")
    return int(trained_on.get("labels", 0)) if isinstance(trained_on, dict) else 0


def retrain_round(
    registry: ModelRegistry,
    retrain: RetrainSpec,
    learner: Learner,
    *,
    app: AppSpec,
    tenants: Sequence[str],
    judge: Callable[[], None] = lambda: None,
) -> str:
    """One look at the labels: retrain and move the alias when enough are new. One line
    back, saying what happened or how many labels it waits for.

    ``judge`` runs between registering the new version and moving the alias (the
    trainer runs the promotion policies there): the challenger it replaces is judged
    on every label there is by then, never replaced unjudged by labels that arrived
    while the new version learnt."""
    name = retrain.model
    head = retrain.head or (app.first_head.name if app.first_head else "")
    previous = retrained_versions(registry, name)
    done = learnt_from(previous[-1] if previous else None)
    labelled = count_labelled(registry.store, tenants, app=app.name, head=head)
    if labelled < done + retrain.min_new_labels:
        return f"{name}: {labelled} labelled records; retrains at {done + retrain.min_new_labels}"
    examples = labelled_examples(registry.store, tenants, app=app.name, head=head)
    version = f"r{int(previous[-1].version[1:]) + 1 if previous else 1}"
    started = time.monotonic()
    trained = learner(examples, registry.blobs, name=name, version=version)
    seconds = time.monotonic() - started
    figures = {**trained.figures, "seconds": round(seconds, 2)}
    info = {
        **trained.info,
        "name": name,
        "version": version,
        "trained_on": {
            "labels": len(examples),
            "tenants": sorted({e.tenant for e in examples}),
            "at_us": now_us(),
            "learner": retrain.learner,
            **figures,
        },
    }
    said = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in figures.items())  # fmt: skip
    reason = f"retrained by {retrain.learner} on {len(examples)} labelled records ({said})"
    registry.register(trained.graph, info, actor=TRAINER_ACTOR, reason=reason)
    judge()
    registry.set_alias(name, retrain.alias, version, actor=TRAINER_ACTOR, reason=reason)
    return f"{name}: registered {version} as @{retrain.alias}: {reason}"


def learner_of(app: AppSpec, retrain: RetrainSpec) -> Learner:
    ref = app.learners.get(retrain.learner)
    if ref is None:
        raise ConfigError(
            f"application {app.name!r} declares no learner {retrain.learner!r} (it declares: "
            f"{', '.join(sorted(app.learners)) or 'none'})"
        )
    learner: Learner = load_ref(ref, f"application {app.name!r} learner {retrain.learner!r}")
    return learner


def run_trainer(
    spec: PipelineSpec,
    *,
    once: bool = False,
    stop: threading.Event | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """The trainer process: the promotion policies, then the retraining rounds, every
    ``every_s`` (the smallest of the file's), until ``stop`` is set (or once)."""
    if not spec.retraining:
        raise ConfigError(
            f"pipeline {spec.name!r} retrains nothing; add a retraining: section naming the "
            "model and the application's learner (docs/models.md, Continuous retraining)"
        )
    if not spec.app:
        raise ConfigError(f"pipeline {spec.name!r} names no application (app: ...) to learn for")
    app = app_named(spec.app).with_settings(spec.settings)
    learners = {r.learner: learner_of(app, r) for r in spec.retraining}
    stop = stop or threading.Event()
    every = min(r.every_s for r in spec.retraining)
    store = ResultsStore(spec.store)
    try:
        registry = ModelRegistry(store, open_blobs(spec.blobs, store))
        while True:
            _judge(spec, say)
            for retrain in spec.retraining:
                tenants = list(retrain.labels_from) or store.tenant_names()
                try:
                    say("retraining: " + retrain_round(
                        registry, retrain, learners[retrain.learner], app=app, tenants=tenants,
                        judge=lambda: _judge(spec, say),
                    ))  # fmt: skip
                except InferstreamError as exc:  # the champion keeps serving; next round
                    log.warning("retraining of %s failed: %s; trying again", retrain.model, exc)
            if once or stop.wait(every):
                return
    finally:
        store.close()


def _judge(spec: PipelineSpec, say: Callable[[str], None]) -> None:
    """One round of the file's promotion policies, said line by line."""
    from inferstream.runner import promote  # the runner builds on this module's peers

    if not spec.promotions:
        return
    try:
        for line in promote(spec):
            say(line)
    except InferstreamError as exc:
        log.warning("promotion round failed: %s; trying again", exc)


__all__ = [
    "BLOB_ATTRIBUTE",
    "TRAINER_ACTOR",
    "Example",
    "Learner",
    "Trained",
    "count_labelled",
    "labelled_examples",
    "learner_of",
    "learnt_from",
    "retrain_round",
    "retrained_versions",
    "run_trainer",
]
