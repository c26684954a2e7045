"""The sink step: write a stage's classified envelopes (or dead letters) to the store.

``store_results`` in a pipeline file. Each micro-batch becomes one transaction:
the champion prediction of each scan goes to ``results``, shadow predictions to
``shadow_results``, and envelopes carrying an ``error`` (read from a ``.dlq``
topic) to ``dead_letters``. A database failure raises out of :meth:`process`, so
the worker retries the whole batch and commits nothing; a redelivered batch
upserts onto the same keys and never doubles a row.

With an application (``app:`` in the pipeline file), each record is first held to
its declaration: it must name its subject, its typed attributes must parse, and
each prediction must answer one of the application's heads with one of its labels.
A record that fails becomes a dead letter with the reason, never a silent drop.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferstream.application import AppSpec
from inferstream.envelope import Envelope, ModelRole, Prediction, now_us
from inferstream.errors import ConfigError, InvalidInput
from inferstream.steps import Outcome, Step, StepContext
from inferstream.store.rows import DeadLetterRow, OnConflict, ResultRow
from inferstream.store.store import ResultsStore


class StoreStep(Step):
    """Upserts each batch into a :class:`ResultsStore` and passes the envelopes on."""

    name = "store_results"

    def __init__(
        self, store: ResultsStore, on_conflict: OnConflict = "ignore", app: AppSpec | None = None
    ) -> None:
        self.store = store
        self.on_conflict: OnConflict = on_conflict
        self.app = app

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        stored_at = now_us()
        outcomes: list[Outcome] = []
        champions: list[ResultRow] = []
        shadows: list[ResultRow] = []
        letters: list[DeadLetterRow] = []
        for env in batch:
            try:
                if env.HasField("error"):
                    letters.append(dead_letter_row(env, stored_at))
                else:
                    if self.app is not None:
                        check_record(env, self.app)
                    champion, shadow = result_rows(env, stored_at)
                    champions.append(champion)
                    shadows.extend(shadow)
            except InvalidInput as exc:  # only this message is unusable
                outcomes.append(exc)
                continue
            outcomes.append(env)
        # Raises StoreError on an outage: the batch is retried, not half-committed.
        self.store.write_batch(
            results=champions, shadows=shadows, dead_letters=letters, on_conflict=self.on_conflict
        )
        return outcomes

    def close(self) -> None:
        self.store.close()


def store_step(context: StepContext, on_conflict: OnConflict = "ignore") -> StoreStep:
    """Factory for ``store_results``; ``on_conflict: update`` lets a replay overwrite results."""
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
    return StoreStep(ResultsStore(context.store_url), on_conflict, context.app)


def check_record(env: Envelope, app: AppSpec) -> None:
    """:class:`InvalidInput` naming what ``env`` lacks to be a record of ``app``."""
    where = f"record {env.id} of application {app.name!r}"
    if not env.attributes.get(app.subject):
        raise InvalidInput(f"{where} has no {app.subject!r}, which names what it is about")
    for attribute in app.attributes:
        value = env.attributes.get(attribute.name)
        if value is not None and not _parses(value, attribute.kind):
            raise InvalidInput(
                f"{where}: attribute {attribute.name!r} is {value[:64]!r}, not {attribute.kind}"
            )
    heads = {head.name: head for head in app.heads}
    for prediction in env.predictions:
        head = heads.get(prediction.head) if prediction.head else app.heads[0]
        if head is None:
            raise InvalidInput(
                f"{where}: model {prediction.model_name} answers head {prediction.head!r}, "
                f"which the application does not have ({', '.join(heads)})"
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


def result_rows(env: Envelope, stored_at_us: int) -> tuple[ResultRow, list[ResultRow]]:
    """The champion row and the shadow rows of one classified envelope."""
    _require_tenant(env)
    champions = [p for p in env.predictions if p.role != ModelRole.MODEL_ROLE_SHADOW]
    if not champions:
        raise InvalidInput(
            f"envelope {env.id} reached the store with no champion prediction; "
            "put a classify step before store_results"
        )
    shadows = [p for p in env.predictions if p.role == ModelRole.MODEL_ROLE_SHADOW]
    # The last champion wins: a later stage's prediction refines an earlier one.
    return _row(env, champions[-1], stored_at_us), [_row(env, p, stored_at_us) for p in shadows]


def _row(env: Envelope, prediction: Prediction, stored_at_us: int) -> ResultRow:
    scores = {label: round(float(score), 6) for label, score in prediction.scores.items()}
    attributes = env.attributes
    return ResultRow(
        id=env.root_id or env.id,
        tenant=env.tenant,
        label=prediction.label,
        confidence=max(scores.values(), default=0.0),
        scores=scores,
        model_name=prediction.model_name,
        model_version=prediction.model_version,
        created_at_us=env.created_at_us,
        ingested_at_us=env.ingested_at_us,
        stored_at_us=stored_at_us,
        latency_ms=(stored_at_us - env.created_at_us) / 1000,
        egg_id=attributes.get("egg_id"),
        tray=attributes.get("tray"),
        scanner=attributes.get("scanner"),
        lineage=[
            {"stage": step.stage, "at_us": step.at_us, "worker": step.worker}
            for step in env.lineage
        ],
        trace_id=env.trace_id,
    )


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
