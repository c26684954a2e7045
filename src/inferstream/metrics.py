"""Prometheus metrics of the stage workers.

One set of metric families, labelled by pipeline and stage. When several worker
processes run under ``inferstream up`` they write to a shared folder named by
``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor before the workers start) and
:func:`render` aggregates them; a single process just uses the default registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

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


def render() -> tuple[bytes, str]:
    """The metrics page (body, content type), aggregated over processes when shared."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
