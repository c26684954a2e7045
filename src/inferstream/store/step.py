"""The sink step: write a stage's classified envelopes (or dead letters) to the store.

``store_results`` in a pipeline file. Each micro-batch becomes one transaction:
each envelope is a row of ``records`` under its own id (a fan-out of N stores N
rows), each of its predictions a row of ``predictions``, and envelopes carrying an
``error`` (read from a ``.dlq`` topic) go to ``dead_letters``. A database failure
raises out of :meth:`process`, so the worker retries the whole batch and commits
nothing; a redelivered batch upserts onto the same keys and never doubles a row.

With an application (``app:`` in the pipeline file), each record is first held to
its declaration: it must name its subject, its typed attributes must parse, and
each prediction must answer one of the application's heads with one of its labels.
A record that fails becomes a dead letter with the reason, never a silent drop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from inferstream.application import AppSpec
from inferstream.envelope import Envelope, ModelRole, Prediction, now_us
from inferstream.errors import ConfigError, InvalidInput
from inferstream.routing import Predicate, parse_predicate
from inferstream.steps import Outcome, Step, StepContext
from inferstream.store.rows import DeadLetterRow, OnConflict, PredictionRow, ResultRow
from inferstream.store.store import ResultsStore


class StoreStep(Step):
    """Upserts each batch into a :class:`ResultsStore` and passes the envelopes on."""

    name = "store_results"

    def __init__(
        self,
        store: ResultsStore,
        on_conflict: OnConflict = "ignore",
        app: AppSpec | None = None,
        without_prediction: Predicate | None = None,
    ) -> None:
        self.store = store
        self.on_conflict: OnConflict = on_conflict
        self.app = app
        self.without_prediction = without_prediction

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        stored_at = now_us()
        outcomes: list[Outcome] = []
        records: list[ResultRow] = []
        predictions: list[PredictionRow] = []
        letters: list[DeadLetterRow] = []
        for env in batch:
            try:
                if env.HasField("error"):
                    letters.append(dead_letter_row(env, stored_at))
                else:
                    if self.app is not None:
                        check_record(env, self.app)
                    unpredicted = self.without_prediction is not None and (
                        self.without_prediction.holds(env)
                    )
                    record, answers = record_rows(env, stored_at, self.app, unpredicted=unpredicted)
                    records.append(record)
                    predictions.extend(answers)
            except InvalidInput as exc:  # only this message is unusable
                outcomes.append(exc)
                continue
            outcomes.append(env)
        # Raises StoreError on an outage: the batch is retried, not half-committed.
        self.store.write_batch(
            results=records,
            predictions=predictions,
            dead_letters=letters,
            on_conflict=self.on_conflict,
        )
        return outcomes

    def close(self) -> None:
        self.store.close()


def store_step(
    context: StepContext,
    on_conflict: OnConflict = "ignore",
    without_prediction: Mapping[str, Any] | None = None,
) -> StoreStep:
    """Factory for ``store_results``; ``on_conflict: update`` lets a replay overwrite results.

    A record of an application with a model must carry a champion prediction (else a
    forgotten ``classify`` would store records with no answer); ``without_prediction``
    (a routing predicate, e.g. ``{attributes: {screened: out}}``) names the ones a
    pipeline deliberately does not classify, stored with no prediction.
    """
    if not context.store_url:
        raise ConfigError(
            f"stage {context.stage!r} uses store_results but the pipeline has no store URL; "
            "set store: sqlite:///results.db (or a postgresql:// URL) in the pipeline file"
        )
    if on_conflict not in ("ignore", "update"):
        raise ConfigError(
            f"stage {context.stage!r}: store_results on_conflict must be 'ignore' or 'update', "
            f"not {on_conflict!r}"
        )
    store = ResultsStore(context.store_url)
    if context.app is not None:
        store.register_app(context.app)
    unpredicted = None
    if without_prediction is not None:
        where = f"stage {context.stage!r}: store_results without_prediction"
        unpredicted = parse_predicate(without_prediction, where)
    return StoreStep(store, on_conflict, context.app, unpredicted)


def check_record(env: Envelope, app: AppSpec) -> None:
    """:class:`InvalidInput` naming what ``env`` lacks to be a record of ``app``."""
    where = f"record {env.id} of application {app.name!r}"
    if not env.attributes.get(app.subject):
        raise InvalidInput(f"{where} has no {app.subject!r}, which names what it is about")
    for attribute in app.attributes:
        value = env.attributes.get(attribute.name)
        if value is not None and not _parses(value, attribute.kind):
            # A dead letter is read by more people than the record: never repeat a secret.
            secret = f"a {type(value).__name__} (sensitive: its value is not shown)"
            shown = secret if attribute.sensitive else repr(value[:64])
            raise InvalidInput(
                f"{where}: attribute {attribute.name!r} is {shown}, not {attribute.kind}"
            )
    heads = {head.name: head for head in app.heads}
    for prediction in env.predictions:
        head = heads.get(prediction.head) if prediction.head else app.first_head
        if head is None:
            raise InvalidInput(
                f"{where}: model {prediction.model_name} answers head {prediction.head!r}, "
                f"which the application does not have ({', '.join(heads) or 'it has none'})"
            )
        if prediction.label not in head.label_names:
            raise InvalidInput(
                f"{where}: model {prediction.model_name} answered {prediction.label!r}, which "
                f"head {head.name!r} does not have ({', '.join(head.label_names)})"
            )


def _parses(value: str, kind: str) -> bool:
    converter = {"int": int, "float": float}.get(kind)
    if converter is None:
        return True
    try:
        converter(value)
    except ValueError:
        return False
    return True


def record_rows(
    env: Envelope, stored_at_us: int, app: AppSpec | None = None, *, unpredicted: bool = False
) -> tuple[ResultRow, list[PredictionRow]]:
    """The record of one envelope and a row for each of its predictions.

    The record carries the champion of the application's first head (the last one,
    when a later stage refined an earlier); without an application, of any head. The
    record of an application without heads (one that runs no model) carries none, and
    so may one the pipeline chose not to classify (``unpredicted``).
    """
    _require_tenant(env)
    if app is not None and app.first_head is None:
        return _record(env, _no_prediction(env, stored_at_us), stored_at_us, app), []
    first_head = app.heads[0].name if app else ""
    answers = [_prediction(env, p, stored_at_us, first_head) for p in env.predictions]
    headline = [a for a in answers if a.role == "champion" and a.head == first_head]
    if not headline and unpredicted:
        return _record(env, _no_prediction(env, stored_at_us), stored_at_us, app), answers
    if not headline:
        raise InvalidInput(
            f"envelope {env.id} reached the store with no champion prediction"
            f"{f' for head {first_head!r}' if first_head else ''}; put a classify step "
            "before store_results"
        )
    return _record(env, headline[-1], stored_at_us, app), answers


def _prediction(
    env: Envelope, prediction: Prediction, stored_at_us: int, first_head: str
) -> PredictionRow:
    scores = {label: round(float(score), 6) for label, score in prediction.scores.items()}
    shadow = prediction.role == ModelRole.MODEL_ROLE_SHADOW
    return PredictionRow(
        tenant=env.tenant,
        record_id=env.id,
        head=prediction.head or first_head,
        role="shadow" if shadow else "champion",
        model_name=prediction.model_name,
        model_version=prediction.model_version,
        label=prediction.label,
        confidence=max(scores.values(), default=0.0),
        scores=scores,
        predicted_at_us=prediction.predicted_at_us or stored_at_us,
        stored_at_us=stored_at_us,
    )


def _no_prediction(env: Envelope, stored_at_us: int) -> PredictionRow:
    """The empty headline of a record no model predicted anything about."""
    return PredictionRow(
        tenant=env.tenant, record_id=env.id, head="", role="champion", model_name="",
        model_version="", label="", confidence=0.0, scores={}, predicted_at_us=stored_at_us,
        stored_at_us=stored_at_us,
    )  # fmt: skip


def _record(
    env: Envelope, headline: PredictionRow, stored_at_us: int, app: AppSpec | None
) -> ResultRow:
    attributes = env.attributes
    return ResultRow(
        id=env.id,
        tenant=env.tenant,
        label=headline.label,
        confidence=headline.confidence,
        scores=headline.scores,
        model_name=headline.model_name,
        model_version=headline.model_version,
        created_at_us=env.created_at_us,
        ingested_at_us=env.ingested_at_us,
        stored_at_us=stored_at_us,
        latency_ms=(stored_at_us - env.created_at_us) / 1000,
        subject=attributes.get(app.subject) if app else None,
        group=attributes.get(app.group) if app and app.group else None,
        source=attributes.get(app.source) if app and app.source else None,
        lineage=[
            {"stage": step.stage, "at_us": step.at_us, "worker": step.worker}
            for step in env.lineage
        ],
        trace_id=env.trace_id,
        app=app.name if app else "",
        root_id=env.root_id or env.id,
        parent_id=env.parent_id or None,
        attributes=typed_attributes(attributes, app),
        head=headline.head,
    )


def typed_attributes(attributes: Mapping[str, str], app: AppSpec | None) -> dict[str, Any]:
    """The declared attributes, typed (all of them as text, without an application)."""
    if app is None:
        return dict(attributes)
    typed: dict[str, Any] = {}
    for attribute in app.attributes:
        value = attributes.get(attribute.name)
        if value is not None:
            typed[attribute.name] = _CONVERT[attribute.kind](value)
    return typed


_CONVERT: dict[str, Any] = {"str": str, "int": int, "float": float}


def dead_letter_row(env: Envelope, stored_at_us: int) -> DeadLetterRow:
    """The ``dead_letters`` row of an envelope read from a ``.dlq`` topic."""
    _require_tenant(env)
    error = env.error
    # When it failed is best known from the lineage the worker stamped; else now.
    at_us = env.lineage[-1].at_us if env.lineage else stored_at_us
    return DeadLetterRow(
        id=env.id,
        tenant=env.tenant,
        stage=error.stage,
        error_type=error.error_type,
        message=error.message,
        attempts=error.attempts,
        topic=error.topic,
        partition=error.partition,
        offset=error.offset,
        at_us=at_us,
        root_id=env.root_id,
        trace_id=env.trace_id,
    )


def _require_tenant(env: Envelope) -> None:
    if not env.tenant:
        raise InvalidInput(
            f"envelope {env.id} has no tenant; set it at ingest so its results stay isolated"
        )
