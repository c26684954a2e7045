"""Image classification with ONNX Runtime, and the ``classify`` pipeline step.

A model is two files side by side: ``<name>.onnx`` and ``<name>.json`` (name, version,
labels in output order, input and output tensor names, input shape, MACs, training
provenance). :func:`load_model` finds them in an installed application's ``models/``
folder (:func:`inferstream.application.find_model`) or at a path. Sessions run on
one thread with sequential execution: on a serving machine a stage scales by worker
processes, and threads inside each would only fight for cores.

The step runs one inference call per micro-batch, appends a
:class:`~inferstream.envelope.Prediction` to each envelope and drops the tensor
payload (keeping its content type) so the results travelling on the bus stay small.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from inferstream.application import find_model, installed_apps
from inferstream.envelope import Envelope, ModelRole, Prediction, from_tensor, now_us
from inferstream.errors import ConfigError, InvalidInput, ModelError
from inferstream.metrics import ModelMetrics
from inferstream.steps import Outcome, Step, StepContext

F32 = NDArray[np.float32]

ROLES = {"champion": ModelRole.MODEL_ROLE_CHAMPION, "shadow": ModelRole.MODEL_ROLE_SHADOW}
#: The role of a ``classify`` step in a pipeline file that names none.
DEFAULT_ROLE = "champion"
_REQUIRED = ("name", "version", "labels", "input", "output", "input_shape")


@dataclass(frozen=True)
class ModelInfo:
    """A model's metadata (its ``.json`` file)."""

    name: str
    version: str
    labels: tuple[str, ...]
    input: str
    output: str
    input_shape: tuple[int, ...]
    macs: int = 0
    extra: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any], where: Path) -> ModelInfo:
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ModelError(f"model metadata {where} lacks {missing}; re-export the model")
        known = {*_REQUIRED, "macs"}
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            labels=tuple(str(label) for label in data["labels"]),
            input=str(data["input"]),
            output=str(data["output"]),
            input_shape=tuple(int(dim) for dim in data["input_shape"]),
            macs=int(data.get("macs", 0)),
            extra=tuple((k, v) for k, v in data.items() if k not in known),
        )


def session_options() -> ort.SessionOptions:
    """Options for serving: one thread, sequential, every graph optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def softmax(logits: F32) -> F32:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: F32 = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities


class Classifier(Protocol):
    """What a :class:`ClassifyStep` runs: a loaded :class:`Model`, or a model on a remote
    server (:class:`inferstream.remote_classify.RemoteModel`). ``info`` names the model
    that made the last :meth:`predict`."""

    @property
    def info(self) -> ModelInfo: ...

    def predict(self, batch: NDArray[Any]) -> tuple[list[str], F32]: ...


class Model:
    """A loaded ONNX classifier; :meth:`predict` takes a whole batch."""

    def __init__(self, info: ModelInfo, session: ort.InferenceSession) -> None:
        self.info = info
        self._session = session

    @property
    def session(self) -> ort.InferenceSession:
        """The ONNX Runtime session: the raw graph, tensors in and out (the v2 protocol
        serves it so, :mod:`inferstream.api.v2`)."""
        return self._session

    def logits(self, batch: NDArray[Any]) -> F32:
        expected = self.info.input_shape
        if batch.ndim != len(expected) + 1 or tuple(batch.shape[1:]) != expected:
            raise InvalidInput(
                f"model {self.info.name} takes (N, {', '.join(map(str, expected))}) input, "
                f"got {list(batch.shape)}"
            )
        feed = {self.info.input: np.ascontiguousarray(batch, dtype=np.float32)}
        (out,) = self._session.run([self.info.output], feed)
        logits: F32 = np.asarray(out, dtype=np.float32)
        return logits

    def predict(self, batch: NDArray[Any]) -> tuple[list[str], F32]:
        """Labels and class probabilities (N, classes) of a batch."""
        probabilities = softmax(self.logits(batch))
        labels = [self.info.labels[i] for i in probabilities.argmax(axis=1)]
        return labels, probabilities


def _model_paths(name_or_path: str | Path) -> tuple[Path, Path]:
    """A path as given, or a name looked up in the installed applications' ``models/``."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".onnx", ".json")):
        base = Path(text).with_suffix("")
    else:
        base = (find_model(text) or Path("<no installed application ships it>")) / text
    return base.with_suffix(".onnx"), base.with_suffix(".json")


def read_model_info(name_or_path: str | Path) -> tuple[ModelInfo, str]:
    """A model's metadata and the SHA-256 of its ONNX file, without loading the graph."""
    onnx_path, json_path = _model_paths(name_or_path)
    try:
        info = ModelInfo.from_json(json.loads(json_path.read_text()), json_path)
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {name_or_path!r}: cannot read its files: {exc}") from exc
    return info, digest


def load_model(name_or_path: str | Path) -> Model:
    """Load ``<name>.onnx`` + ``<name>.json`` from the package models or a path."""
    onnx_path, json_path = _model_paths(name_or_path)
    if not onnx_path.is_file() or not json_path.is_file():
        shipped = sorted(
            f"{path.stem} ({app.name})"
            for app in installed_apps().values()
            for path in app.models_dir.glob("*.onnx")
        )
        raise ModelError(
            f"model {name_or_path!r}: need {onnx_path} and {json_path}; "
            f"models the installed applications ship: {', '.join(shipped) or 'none'}"
        )
    try:
        info = ModelInfo.from_json(json.loads(json_path.read_text()), json_path)
        graph = onnx_path.read_bytes()
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {name_or_path!r}: cannot read its files: {exc}") from exc
    return model_from_bytes(graph, info, repr(str(name_or_path)))


def model_from_bytes(graph: bytes, info: ModelInfo, where: str = "") -> Model:
    """A model from its ONNX bytes and metadata (a registry artifact, or files read)."""
    where = where or f"{info.name} {info.version}"
    try:
        session = ort.InferenceSession(
            graph, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
        raise ModelError(f"model {where}: ONNX Runtime cannot load it: {exc}") from exc
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if info.input not in names[0] or info.output not in names[1]:
        raise ModelError(
            f"model {info.name}: metadata names input {info.input!r} and output "
            f"{info.output!r}, the graph has inputs {names[0]} and outputs {names[1]}"
        )
    return Model(info, session)


class ClassifyStep(Step):
    """Classifies each envelope's float32 tensor payload and records the prediction."""

    name = "classify"

    def __init__(
        self, model: Classifier, role: ModelRole, head: str = "", where: tuple[str, str] = ("", "")
    ) -> None:
        self.model = model
        self.role = role
        self.head = head
        #: (pipeline, stage) labelling the model metrics (drift before labels).
        self.where = where
        self._metrics: dict[tuple[str, str], ModelMetrics] = {}

    def _observe(self, inputs: F32, labels: list[str], probabilities: F32) -> None:
        info = self.model.info
        metrics = self._metrics.get((info.name, info.version))
        if metrics is None:
            metrics = ModelMetrics.for_model(*self.where, info.name, info.version, info.labels)
            self._metrics[(info.name, info.version)] = metrics
        for label, count in Counter(labels).items():
            metrics.predictions[label].inc(count)
        for confidence in probabilities.max(axis=1).tolist():
            metrics.confidence.observe(confidence)
        for mean in inputs.reshape(len(inputs), -1).mean(axis=1).tolist():
            metrics.input_mean.observe(mean)

    def _input(self, env: Envelope) -> F32:
        if env.payload.WhichOneof("body") != "tensor":
            raise InvalidInput(
                f"classify needs a tensor payload, got {env.payload.WhichOneof('body') or 'none'}; "
                "put a preprocessing step before it (an acting classify step takes the "
                "tensor: list shadow steps before it)"
            )
        array = from_tensor(env.payload.tensor)
        if array.dtype != np.float32 or tuple(array.shape) != self.model.info.input_shape:
            raise InvalidInput(
                f"model {self.model.info.name} takes float32 {list(self.model.info.input_shape)}"
                f" tensors, got {array.dtype} {list(array.shape)}"
            )
        return array

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        inputs, slots = [], []
        for i, env in enumerate(batch):
            try:
                inputs.append(self._input(env))
                slots.append(i)
            except InvalidInput as exc:
                outcomes[i] = exc
        if inputs:
            stacked = np.stack(inputs)
            labels, probabilities = self.model.predict(stacked)
            self._observe(stacked, labels, probabilities)
            stamp = now_us()
            for slot, label, probs in zip(slots, labels, probabilities, strict=True):
                outcomes[slot] = self._annotate(batch[slot], label, probs, stamp)
        return [o for o in outcomes if o is not None]

    def _annotate(self, env: Envelope, label: str, probs: F32, stamp: int) -> Envelope:
        out = Envelope()
        out.CopyFrom(env)
        info = self.model.info
        out.predictions.append(
            Prediction(
                model_name=info.name,
                model_version=info.version,
                role=self.role,
                head=self.head,
                label=label,
                scores={name: float(p) for name, p in zip(info.labels, probs, strict=True)},
                predicted_at_us=stamp,
            )
        )
        if self.role != ModelRole.MODEL_ROLE_SHADOW:
            # Keeps content_type; the bus carries results only. A shadow step leaves the
            # tensor for the acting step after it.
            out.payload.ClearField("tensor")
        return out


@dataclass(frozen=True)
class StepModel:
    """What a ``classify`` step's parameters say, checked (see :func:`classify_step`)."""

    role: ModelRole
    head: str  # the head the model answers ("" without an application)
    refusal: Callable[[ModelInfo], str | None]  # why a model (its metadata) cannot serve, or None


def check_step(context: StepContext, model: str, role: str, head: str) -> StepModel:
    """Check a ``classify`` step's parameters against its application's heads; the
    result tells a loaded model whose labels the head lacks (refused at start, not
    discovered record by record in the store)."""
    if not model:
        raise ConfigError(
            f"classify step in stage {context.stage!r} names no model; write "
            "{step: classify, model: NAME} with a model an application ships, a path, "
            "or NAME@ALIAS in the model registry"
        )
    if role not in ROLES:
        raise ConfigError(
            f"classify step in stage {context.stage!r}: role must be one of "
            f"{sorted(ROLES)}, got {role!r}"
        )
    app = context.app
    answered = None
    if app is not None:
        answered = app.head(head) if head else app.first_head
        if answered is None:
            raise ConfigError(
                f"classify step in stage {context.stage!r}: application {app.name!r} "
                "declares no prediction head; add one (heads=...) for the model to answer"
            )

    def refusal(info: ModelInfo) -> str | None:
        if answered is None or app is None:
            return None
        strangers = sorted(set(info.labels) - set(answered.label_names))
        if not strangers:
            return None
        return (
            f"classify step in stage {context.stage!r}: model {info.name} "
            f"{info.version} predicts {', '.join(strangers)}, which head "
            f"{answered.name!r} of application {app.name!r} does not have; pick the model "
            "that answers it"
        )

    return StepModel(ROLES[role], answered.name if answered else head, refusal)


def classify_step(
    context: StepContext, model: str = "", role: str = DEFAULT_ROLE, head: str = ""
) -> ClassifyStep:
    """A ``classify`` step on a model's files: a name an installed application ships in
    its ``models/`` folder, or a path to ``<name>.onnx``. The pipeline file's
    ``classify`` is :func:`inferstream.serving.classify_step`, which also takes
    ``name@alias`` in the model registry."""
    checked = check_step(context, model, role, head)
    loaded = load_model(model)
    problem = checked.refusal(loaded.info)
    if problem:
        raise ConfigError(problem)
    return ClassifyStep(loaded, checked.role, checked.head, (context.pipeline, context.stage))


__all__ = [
    "Classifier",
    "ClassifyStep",
    "Model",
    "ModelInfo",
    "StepModel",
    "check_step",
    "classify_step",
    "load_model",
    "read_model_info",
    "softmax",
]
