"""The ``remote_classify`` step: classification by a model on a v2 model server.

Big models live on GPU model servers (Triton, MLServer, KServe) that speak the Open
Inference Protocol; this step sends each micro-batch there instead of running ONNX
Runtime in the worker, and records predictions exactly as ``classify`` does::

    - step: remote_classify
      url: grpc://models.internal:8081     # or http://...:8080 for the REST API
      model: egg_sexing                    # the name on the server
      version: ""                          # pinned, or "" for what the server serves
      timeout_s: 5                         # per call; a timeout is a transient error
      max_batch: 64                        # the largest batch one call sends

Each prediction is stamped with the name and version *the server answered*, so a model
swapped on the server shows in the records from the next call on. The labels, in the
order of the model's output, come from ``labels:`` or else from the application's head.
The server's metadata is read when the worker starts (an unknown model or a tensor that
does not fit stops it with the reason); when the server is away then, the first batch
reads it, and the worker waits the server out like any dependency (see
:mod:`inferstream.open_inference` for which errors are transient).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from inferstream.classify import (
    DEFAULT_ROLE,
    F32,
    ClassifyStep,
    ModelInfo,
    check_step,
    softmax,
)
from inferstream.envelope import Envelope, ModelRole
from inferstream.errors import ConfigError, ModelError, RemoteModelUnavailable
from inferstream.open_inference import RemoteMetadata, TensorSpec, V2Client, connect
from inferstream.steps import Outcome, StepContext

log = logging.getLogger(__name__)

#: What the model's output holds: raw scores (softmax applied here) or probabilities.
SCORES = ("logits", "probabilities")


def _pick(tensors: tuple[TensorSpec, ...], name: str, kind: str, where: str) -> TensorSpec:
    if not tensors:
        raise ModelError(f"{where}: its metadata declares no {kind}s")
    if not name:
        return tensors[0]
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise ModelError(f"{where} has no {kind} {name!r}; it has {[t.name for t in tensors]}")


class RemoteModel:
    """A model on a v2 server, looking like a loaded :class:`~inferstream.classify.Model`
    to :class:`~inferstream.classify.ClassifyStep`."""

    def __init__(
        self,
        client: V2Client,
        labels: tuple[str, ...],
        scores: str = "logits",
        tensors: tuple[str, str] = ("", ""),
    ) -> None:
        self.client = client
        self.labels = labels
        self.scores = scores
        self.tensors = tensors  # (input, output) names; "" for the first one declared
        self._info: ModelInfo | None = None

    def describe(self) -> ModelInfo:
        """Read the server's metadata (raises when it is away or does not fit)."""
        where = self.client.where
        meta: RemoteMetadata = self.client.metadata()
        source = _pick(meta.inputs, self.tensors[0], "input", where)
        target = _pick(meta.outputs, self.tensors[1], "output", where)
        if source.datatype != "FP32":
            raise ModelError(f"{where} takes {source.datatype} input; remote_classify sends FP32")
        shape = source.shape[1:]
        if any(dim < 0 for dim in shape):
            raise ModelError(
                f"{where} declares input {source.name} as {list(source.shape)}; remote_classify "
                "needs every dimension but the batch fixed to check scans before sending them"
            )
        width = target.shape[-1] if target.shape else -1
        if width >= 0 and width != len(self.labels):
            raise ModelError(
                f"{where} answers {width} scores per scan in {target.name}, but the step "
                f"has {len(self.labels)} labels ({', '.join(self.labels)}); give labels: in "
                "the order of the model's output"
            )
        version = self.client.version or (meta.versions[-1] if meta.versions else "")
        self._info = ModelInfo(
            name=meta.name or self.client.model,
            version=version,
            labels=self.labels,
            input=source.name,
            output=target.name,
            input_shape=tuple(shape),
        )
        return self._info

    @property
    def info(self) -> ModelInfo:
        return self._info if self._info is not None else self.describe()

    def predict(self, batch: NDArray[Any]) -> tuple[list[str], F32]:
        info = self.info
        answer = self.client.infer(
            {info.input: np.ascontiguousarray(batch, dtype=np.float32)}, info.output, ""
        )
        scores = np.asarray(answer.output, dtype=np.float32)
        if scores.shape != (len(batch), len(self.labels)):
            raise ModelError(
                f"{self.client.where} answered {info.output} {list(scores.shape)} for "
                f"{len(batch)} scans; expected [{len(batch)}, {len(self.labels)}]"
            )
        if answer.model_name != info.name or answer.model_version != info.version:
            self._info = ModelInfo(
                answer.model_name, answer.model_version, info.labels, info.input, info.output,
                info.input_shape,
            )  # fmt: skip
        probabilities = softmax(scores) if self.scores == "logits" else scores
        labels = [self.labels[i] for i in probabilities.argmax(axis=1)]
        return labels, probabilities


class RemoteClassifyStep(ClassifyStep):
    """``classify``, one server call per ``max_batch`` envelopes."""

    name = "remote_classify"

    def __init__(
        self,
        model: RemoteModel,
        role: ModelRole,
        head: str = "",
        where: tuple[str, str] = ("", ""),
        max_batch: int = 64,
    ) -> None:
        super().__init__(model, role, head, where)
        self.remote = model
        self.max_batch = max_batch

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        # Each call stamps its predictions with the model that answered it.
        outcomes: list[Outcome] = []
        for start in range(0, len(batch), self.max_batch):
            outcomes.extend(super().process(batch[start : start + self.max_batch]))
        return outcomes

    def close(self) -> None:
        self.remote.client.close()


def _labels(context: StepContext, labels: Sequence[str], head: str) -> tuple[str, ...]:
    if labels:
        return tuple(str(label) for label in labels)
    app = context.app
    answered = (app.head(head) if head else app.first_head) if app is not None else None
    if answered is None:
        raise ConfigError(
            f"remote_classify step in stage {context.stage!r}: give labels: [...] in the "
            "order of the model's output (the pipeline's application declares no head "
            "to take them from)"
        )
    return answered.label_names


def remote_classify_step(
    context: StepContext,
    *,
    url: str = "",
    model: str = "",
    version: str = "",
    labels: Sequence[str] = (),
    role: str = DEFAULT_ROLE,
    head: str = "",
    timeout_s: float = 5.0,
    max_batch: int = 64,
    scores: str = "logits",
    input: str = "",
    output: str = "",
) -> RemoteClassifyStep:
    """A ``remote_classify`` step: see the module's documentation for its parameters."""
    if not url:
        raise ConfigError(
            f"remote_classify step in stage {context.stage!r} names no url; write "
            "url: http://HOST:PORT (v2 REST) or grpc://HOST:PORT (v2 gRPC)"
        )
    if scores not in SCORES:
        raise ConfigError(f"remote_classify: scores must be one of {SCORES}, got {scores!r}")
    if max_batch < 1:
        raise ConfigError(f"remote_classify: max_batch must be 1 or more, got {max_batch}")
    checked = check_step(context, model, role, head)
    remote = RemoteModel(
        connect(url, model, str(version), float(timeout_s)),
        _labels(context, labels, checked.head),
        scores,
        (input, output),
    )
    problem = checked.refusal(
        ModelInfo(model, str(version), remote.labels, input, output, input_shape=())
    )
    if problem:
        raise ConfigError(problem)
    try:
        remote.describe()
    except RemoteModelUnavailable as exc:
        log.warning("model server away at start; the first batch asks again: %s", exc)
    except ModelError as exc:
        raise ConfigError(f"remote_classify step in stage {context.stage!r}: {exc}") from exc
    where = (context.pipeline, context.stage)
    return RemoteClassifyStep(remote, checked.role, checked.head, where, int(max_batch))


__all__ = ["RemoteClassifyStep", "RemoteModel", "remote_classify_step"]
