"""inferstream: trained image models as near-real-time, event-driven pipelines.

A reading guide, from the message outwards:

- :mod:`inferstream.envelope` — the protobuf envelope that travels on every topic.
- :mod:`inferstream.bus` — the bus interface; ``bus.embedded`` (SQLite log, default)
  and ``bus.kafka`` backends, chosen by URL.
- :mod:`inferstream.blobs` — claim-check storage for large payloads, per tenant.
- :mod:`inferstream.codecs` — content types: sniff, check, decode, render.
- :mod:`inferstream.steps` — the step interface and the registry of built-in steps.
- :mod:`inferstream.worker` — a stage's micro-batch loop: consume, run steps,
  produce, commit; retries and dead letters.
- :mod:`inferstream.pipeline` — pipeline files (YAML): spec <- parse <- load.
- :mod:`inferstream.supervisor` — ``inferstream up``: every stage as supervised processes.
- :mod:`inferstream.store` — the results store (SQLite or PostgreSQL).
- :mod:`inferstream.application` — what an application declares (:class:`AppSpec`).
- :mod:`inferstream.api` — the service API and the live dashboard.
- :mod:`inferstream.cli` — the ``inferstream`` command.

Applications live apart, in ``inferstream.apps.<name>`` (the bundled ones) or in
any installed package; the core never imports them.

The names below are the public API an application is written against; they load on
first use, so ``import inferstream`` stays cheap.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# ONNX Runtime 1.29+ sends usage telemetry to Microsoft from Linux too, and writes a
# device id and an event queue under ~/.cache/Microsoft. Scanners, hatcheries and
# clinics running inferstream did not agree to that: off unless the operator sets the
# variable. Set here, before any module imports onnxruntime (it reads it once).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

#: Public name -> the module that defines it.
_EXPORTS = {
    "AppSpec": "inferstream.application",
    "Attribute": "inferstream.application",
    "Head": "inferstream.application",
    "Label": "inferstream.application",
    "Ratio": "inferstream.application",
    "app_named": "inferstream.application",
    "register_app": "inferstream.application",
    "Checked": "inferstream.codecs",
    "Codec": "inferstream.codecs",
    "KeyedState": "inferstream.dataflow.keyed",
    "StatefulStep": "inferstream.dataflow.keyed",
    "ImageLimits": "inferstream.codecs",
    "register_codec": "inferstream.codecs",
    "Envelope": "inferstream.envelope",
    "ModelRole": "inferstream.envelope",
    "Prediction": "inferstream.envelope",
    "from_tensor": "inferstream.envelope",
    "new_envelope": "inferstream.envelope",
    "to_tensor": "inferstream.envelope",
    "ConfigError": "inferstream.errors",
    "InferstreamError": "inferstream.errors",
    "InvalidInput": "inferstream.errors",
    "TransientError": "inferstream.errors",
    "PipelineSpec": "inferstream.pipeline",
    "load_pipeline": "inferstream.pipeline",
    "Outcome": "inferstream.steps",
    "Step": "inferstream.steps",
    "StepContext": "inferstream.steps",
}

__all__ = [
    "AppSpec",
    "Attribute",
    "Checked",
    "Codec",
    "ConfigError",
    "Envelope",
    "Head",
    "ImageLimits",
    "InferstreamError",
    "InvalidInput",
    "KeyedState",
    "Label",
    "ModelRole",
    "Outcome",
    "PipelineSpec",
    "Prediction",
    "Ratio",
    "StatefulStep",
    "Step",
    "StepContext",
    "TransientError",
    "__version__",
    "app_named",
    "from_tensor",
    "load_pipeline",
    "new_envelope",
    "register_app",
    "register_codec",
    "to_tensor",
]

if TYPE_CHECKING:
    from inferstream.application import (
        AppSpec,
        Attribute,
        Head,
        Label,
        Ratio,
        app_named,
        register_app,
    )
    from inferstream.codecs import Checked, Codec, ImageLimits, register_codec
    from inferstream.dataflow.keyed import KeyedState, StatefulStep
    from inferstream.envelope import (
        Envelope,
        ModelRole,
        Prediction,
        from_tensor,
        new_envelope,
        to_tensor,
    )
    from inferstream.errors import ConfigError, InferstreamError, InvalidInput, TransientError
    from inferstream.pipeline import PipelineSpec, load_pipeline
    from inferstream.steps import Outcome, Step, StepContext


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inferstream' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
