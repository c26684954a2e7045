"""Prometheus metrics of the stage workers.

One set of metric families, labelled by pipeline and stage. When several worker
processes run under ``inferstream up`` they write to a shared folder named by
``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor before the workers start) and
:func:`render` aggregates them; a single process just uses the default registry. On a
cluster each worker is a pod of its own and serves its own page (:func:`serve`,
``inferstream worker --metrics-port``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

from inferstream.errors import ConfigError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_LABELS = ("pipeline", "stage")
MESSAGES_IN = Counter("inferstream_messages_in", "Messages consumed by a stage", _LABELS)
MESSAGES_OUT = Counter("inferstream_messages_out", "Messages produced by a stage", _LABELS)
MESSAGES_FAILED = Counter(
    "inferstream_messages_failed", "Failed attempts at processing a message", _LABELS
)
DEAD_LETTERS = Counter(
    "inferstream_dead_letters", "Messages sent to the dead-letter topic", _LABELS
)
BATCH_SIZE = Histogram(
    "inferstream_batch_size", "Messages per micro-batch", _LABELS, buckets=BATCH_BUCKETS
)
PROCESSING_SECONDS = Histogram(
    "inferstream_batch_processing_seconds",
    "Time to run a stage's steps on one batch, produce and commit",
    _LABELS,
    buckets=LATENCY_BUCKETS,
)
MESSAGE_AGE_SECONDS = Histogram(
    "inferstream_message_age_seconds",
    "End-to-end age of a message when a stage finished it (now - created_at)",
    _LABELS,
    buckets=LATENCY_BUCKETS,
)


@dataclass(frozen=True)
class StageMetrics:
    """The metric children of one stage, resolved once (labels() is not free)."""

    messages_in: Counter
    messages_out: Counter
    failed: Counter
    dead_letters: Counter
    batch_size: Histogram
    processing: Histogram
    age: Histogram

    @classmethod
    def for_stage(cls, pipeline: str, stage: str) -> StageMetrics:
        labels = {"pipeline": pipeline, "stage": stage}
        return cls(
            messages_in=MESSAGES_IN.labels(**labels),
            messages_out=MESSAGES_OUT.labels(**labels),
            failed=MESSAGES_FAILED.labels(**labels),
            dead_letters=DEAD_LETTERS.labels(**labels),
            batch_size=BATCH_SIZE.labels(**labels),
            processing=PROCESSING_SECONDS.labels(**labels),
            age=MESSAGE_AGE_SECONDS.labels(**labels),
        )


LATE_EVENTS = Counter(
    "inferstream_late_events",
    "Events sent to <input>.late: their window or join was already emitted",
    _LABELS,
)
SKIPPED_REDELIVERED = Counter(
    "inferstream_state_skipped_redelivered",
    "Redelivered messages a stateful stage skipped: their effect was already in its state",
    _LABELS,
)
JOINS = Counter(
    "inferstream_joins",
    "Joins emitted, by result: complete, or partial (timed out or a branch failed)",
    (*_LABELS, "result"),
)
JOIN_WAIT_SECONDS = Histogram(
    "inferstream_join_wait_seconds",
    "How long after its earliest member's event time a join was emitted (wall clock)",
    _LABELS,
    buckets=(*LATENCY_BUCKETS, 30.0, 60.0, 300.0),
)
OPEN_ENTRIES = Gauge(
    "inferstream_operator_open",
    "Open windows or joins waiting for members, over the tasks a worker holds",
    _LABELS,
    multiprocess_mode="livesum",
)
STATE_KEYS = Gauge(
    "inferstream_state_keys",
    "Keys in a stateful stage's durable state",
    _LABELS,
    multiprocess_mode="livemax",
)
STATE_BYTES = Gauge(
    "inferstream_state_bytes",
    "Size of a stateful stage's durable state (JSON values, bytes)",
    _LABELS,
    multiprocess_mode="livemax",
)


@dataclass(frozen=True)
class OperatorMetrics:
    """The metric children of one stateful stage (joins, windows, keyed state)."""

    late: Counter
    skipped: Counter
    #: Result ("complete" or "partial") -> its counter.
    joins: dict[str, Counter]
    join_wait: Histogram
    open: Gauge
    state_keys: Gauge
    state_bytes: Gauge

    @classmethod
    def for_stage(cls, pipeline: str, stage: str) -> OperatorMetrics:
        labels = {"pipeline": pipeline, "stage": stage}
        return cls(
            late=LATE_EVENTS.labels(**labels),
            skipped=SKIPPED_REDELIVERED.labels(**labels),
            joins={
                result: JOINS.labels(result=result, **labels) for result in ("complete", "partial")
            },
            join_wait=JOIN_WAIT_SECONDS.labels(**labels),
            open=OPEN_ENTRIES.labels(**labels),
            state_keys=STATE_KEYS.labels(**labels),
            state_bytes=STATE_BYTES.labels(**labels),
        )


# -- what each model version sees and says: drift before labels arrive ---------------

_MODEL_LABELS = (*_LABELS, "model", "version")
MODEL_PREDICTIONS = Counter(
    "inferstream_model_predictions",
    "Predictions of a model version, by label (the label mix)",
    (*_MODEL_LABELS, "label"),
)
MODEL_CONFIDENCE = Histogram(
    "inferstream_model_confidence",
    "A model version's probability for the label it gave (its mean estimates accuracy "
    "until labels arrive)",
    _MODEL_LABELS,
    buckets=(0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0),
)
MODEL_INPUT_MEAN = Histogram(
    "inferstream_model_input_mean",
    "Mean value of each input a model version scored (a simple image statistic)",
    _MODEL_LABELS,
    buckets=tuple(round(0.1 * i, 1) for i in range(1, 11)),
)


@dataclass(frozen=True)
class ModelMetrics:
    """The metric children of one model version in one stage."""

    predictions: dict[str, Counter]
    confidence: Histogram
    input_mean: Histogram

    @classmethod
    def for_model(
        cls, pipeline: str, stage: str, model: str, version: str, labels: tuple[str, ...]
    ) -> ModelMetrics:
        names = {"pipeline": pipeline, "stage": stage, "model": model, "version": version}
        return cls(
            predictions={label: MODEL_PREDICTIONS.labels(label=label, **names) for label in labels},
            confidence=MODEL_CONFIDENCE.labels(**names),
            input_mean=MODEL_INPUT_MEAN.labels(**names),
        )


def _registry() -> CollectorRegistry:
    """This process's metrics, or every process's when they share a folder (``up``)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def render() -> tuple[bytes, str]:
    """The metrics page (body, content type), aggregated over processes when shared."""
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def serve(port: int) -> None:
    """Serve the metrics page on ``port`` (every address) from a daemon thread.

    For ``inferstream worker --metrics-port`` on a cluster: each worker is a pod of its
    own there, so no supervisor gathers its metrics for the API to show.
    """
    try:
        start_http_server(port, registry=_registry())
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on port {port}: {exc.strerror}; choose another --metrics-port"
        ) from exc
