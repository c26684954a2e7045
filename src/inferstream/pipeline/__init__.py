"""Pipeline definitions: a YAML file or the same dataclasses built in Python.

A pipeline names its bus, results store and blob store by URL, declares the
topics fed from outside (ingest), and lists stages. Each stage reads one topic as
a consumer group, runs its steps fused on every micro-batch, and writes one topic
(or none, for a sink). Example::

    name: grading
    bus: sqlite:///.inferstream/bus.db        # or kafka://127.0.0.1:9092
    store: sqlite:///.inferstream/results.db  # or postgresql+psycopg://...
    blobs: file://.inferstream/blobs
    claim_check_kb: 256                       # larger payloads go to the blob store
    max_clock_skew_s: 60                      # producers' event times at most this far ahead
    topics:
      images.raw: {partitions: 4, retention_hours: 24}
    stages:
      - name: classify
        input: images.raw
        output: images.predicted
        steps: [{step: classify, model: my_model}]
        batch: {max_size: 64, max_wait_ms: 5}
        replicas: 2
      - name: store
        input: images.predicted
        steps: [store_results]

Modules, each importing only those before it:

- :mod:`~inferstream.pipeline.spec` — the frozen dataclasses and their defaults.
- :mod:`~inferstream.pipeline.operators` — ``join:`` and ``window:`` into their specs.
- :mod:`~inferstream.pipeline.parse` — a mapping to a spec; wiring checks.
- :mod:`~inferstream.pipeline.hints` — what runs but is likely a mistake (warnings).
- :mod:`~inferstream.pipeline.load` — the YAML file, its line numbers, ``${VAR}``.
"""

from __future__ import annotations

from inferstream.pipeline.hints import wiring_warnings
from inferstream.pipeline.load import load_pipeline
from inferstream.pipeline.parse import validate
from inferstream.pipeline.spec import (
    DEFAULT_BLOBS,
    DEFAULT_BUS,
    DEFAULT_CLAIM_CHECK_BYTES,
    DEFAULT_STORE,
    BatchSettings,
    PipelineSpec,
    PromotionSpec,
    RetrainSpec,
    StageSpec,
    StepSpec,
)

__all__ = [
    "DEFAULT_BLOBS",
    "DEFAULT_BUS",
    "DEFAULT_CLAIM_CHECK_BYTES",
    "DEFAULT_STORE",
    "BatchSettings",
    "PipelineSpec",
    "PromotionSpec",
    "RetrainSpec",
    "StageSpec",
    "StepSpec",
    "load_pipeline",
    "validate",
    "wiring_warnings",
]
