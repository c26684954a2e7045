"""The per-camera position estimator: which track, head or tail in view, and where.

``estimate`` reads a batch of camera images (the aggregate stage's model inputs, each
placed on its track), runs the view model once on the whole batch and stamps each image
with a ``view`` prediction (empty, body, head, tail) and, for a visible end, its
position in metres on the camera's track. The model's one output holds the view logits
followed by the end's place in the frame (0..1, already squashed), so it is served
through :mod:`inferstream.classify`'s loader and checks. The image is dropped after:
estimates are small on the bus.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferstream.apps.cameras.aggregate import PLACEMENT_ATTRIBUTES
from inferstream.apps.cameras.frames import INPUT_SHAPE
from inferstream.apps.cameras.scene import VIEWS
from inferstream.classify import ROLES, Model, load_model, softmax
from inferstream.envelope import Envelope, Prediction, from_tensor, now_us
from inferstream.errors import ConfigError, InvalidInput
from inferstream.steps import Outcome, Step, StepContext

VIEW_HEAD = "view"
#: What the estimator reads: the camera and where the aggregator placed it.
IMAGE_ATTRIBUTES = ("camera", *PLACEMENT_ATTRIBUTES)


def _image(env: Envelope) -> np.ndarray:
    """The aggregated image's model input, (1, rows, columns) float32."""
    missing = [name for name in IMAGE_ATTRIBUTES if name not in env.attributes]
    if missing or env.payload.WhichOneof("body") != "tensor":
        raise InvalidInput(
            f"camera image lacks {missing or ['a tensor payload']}; the estimators read "
            "camera.images, which the aggregate stage writes"
        )
    array = from_tensor(env.payload.tensor)
    if array.dtype != np.float32 or array.shape != INPUT_SHAPE:
        raise InvalidInput(
            f"camera image is {array.dtype} {list(array.shape)}, "
            f"expected float32 {list(INPUT_SHAPE)}"
        )
    return array


class EstimateStep(Step):
    """Frames -> per-camera estimates (a ``view`` prediction and the end's position)."""

    name = "estimate"

    def __init__(self, model: Model, role: str = "champion") -> None:
        if tuple(model.info.labels) != VIEWS:
            raise ConfigError(
                f"model {model.info.name} answers {list(model.info.labels)}, "
                f"estimate needs {list(VIEWS)}"
            )
        self.model, self.role = model, ROLES[role]

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        good: list[tuple[int, np.ndarray]] = []
        for i, env in enumerate(batch):
            try:
                good.append((i, _image(env)))
                outcomes.append(env)
            except InvalidInput as exc:
                outcomes.append(exc)
        if good:
            out = self.model.logits(np.stack([image for _, image in good]))
            probabilities = softmax(np.ascontiguousarray(out[:, : len(VIEWS)]))
            for (i, _), probs, offset in zip(good, probabilities, out[:, len(VIEWS)], strict=True):
                self._stamp(batch[i], probs, float(offset))
        return outcomes

    def _stamp(self, env: Envelope, probs: np.ndarray, offset: float) -> None:
        view = VIEWS[int(probs.argmax())]
        env.predictions.append(
            Prediction(
                model_name=self.model.info.name,
                model_version=self.model.info.version,
                role=self.role,
                label=view,
                scores={label: float(p) for label, p in zip(VIEWS, probs, strict=True)},
                predicted_at_us=now_us(),
                head=VIEW_HEAD,
            )
        )
        env.attributes["view"] = view
        if view in ("head", "tail"):
            start = float(env.attributes["segment_start_m"])
            end = float(env.attributes["segment_end_m"])
            position = start + min(max(offset, 0.0), 1.0) * (end - start)
            env.attributes["end_m"] = f"{position:.2f}"
        env.payload.ClearField("body")


def estimate_step(
    context: StepContext, model: str = "camera_view", role: str = "champion"
) -> EstimateStep:
    if role not in ROLES:
        raise ConfigError(f"stage {context.stage}: role {role!r} is not one of {sorted(ROLES)}")
    return EstimateStep(load_model(model), role)


class SightingStep(Step):
    """Marks a typed frame as a ``sighting`` record (the first head every record answers)
    and names its locomotive type in the ``loco_type`` attribute."""

    name = "sighting"

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        for env in batch:
            typed = next((p for p in env.predictions if p.head == "type"), None)
            if typed is not None:
                env.attributes["loco_type"] = typed.label
                env.predictions.append(
                    Prediction(
                        model_name=typed.model_name,
                        model_version=typed.model_version,
                        role=typed.role,
                        label="sighting",
                        scores={"sighting": 1.0},
                        predicted_at_us=typed.predicted_at_us,
                        head="record",
                    )
                )
        return list(batch)


def sighting_step(context: StepContext) -> SightingStep:
    return SightingStep()


__all__ = [
    "EstimateStep",
    "SightingStep",
    "estimate_step",
    "sighting_step",
]
