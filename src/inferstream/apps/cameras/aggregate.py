"""The image aggregator: every camera's captures as one checked stream of model inputs.

A camera sends what it captures, an ``.npy`` strip, naming itself and its facility; it
knows nothing of tracks. The ``aggregate`` stage is the one place that knows the
facility's layout (declared as the step's parameters in the pipeline file). For each
frame it checks, and dead-letters with the reason what fails:

- the frame names a ``camera`` and a ``facility``, the facility is this layout's and the
  camera one of its cameras;
- it is ``application/x-npy`` holding a 16 x 48 strip of unsigned 8-bit pixels;

then stamps the camera's ``track`` and segment (``segment_start_m``, ``segment_end_m``)
from the layout, and decodes the strip **once** into the models' input, a float32
(1, 16, 48) tensor in [0, 1] (:func:`~inferstream.apps.cameras.frames.model_input`).
Every service on ``camera.images`` (the production and dev estimators, the type
service, any added later) reads that tensor: none decodes a frame or knows where a
camera is mounted again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from inferstream.apps.cameras.frames import INPUT_SHAPE, model_input
from inferstream.apps.cameras.layout import FacilityLayout
from inferstream.codecs import codec_for
from inferstream.envelope import Envelope, to_tensor
from inferstream.errors import InvalidInput
from inferstream.steps import Outcome, Step, StepContext

FRAME_CONTENT_TYPE = "application/x-npy"
#: What a camera names in every frame.
CAPTURE_ATTRIBUTES = ("camera", "facility")
#: What the aggregator stamps from the layout, and the estimators read.
PLACEMENT_ATTRIBUTES = ("track", "segment_start_m", "segment_end_m")


class AggregateStep(Step):
    """Captured frames -> checked, placed, decoded camera images."""

    name = "aggregate"

    def __init__(self, layout: FacilityLayout) -> None:
        self.layout = layout

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for env in batch:
            try:
                outcomes.append(self._one(env))
            except InvalidInput as exc:
                outcomes.append(exc)
        return outcomes

    def _one(self, env: Envelope) -> Envelope:
        missing = [name for name in CAPTURE_ATTRIBUTES if not env.attributes.get(name)]
        if missing:
            raise InvalidInput(
                f"camera frame lacks attributes {missing}; the camera must send them"
            )
        facility, name = env.attributes["facility"], env.attributes["camera"]
        if facility != self.layout.name:
            raise InvalidInput(
                f"frame from facility {facility!r}; this aggregator serves {self.layout.name!r}"
            )
        camera = self.layout.by_name.get(name)
        if camera is None:
            raise InvalidInput(
                f"camera {name!r} is not in facility {facility!r}'s layout "
                f"(cameras {self.layout.cameras[0].name}..{self.layout.cameras[-1].name})"
            )
        if env.payload.WhichOneof("body") != "inline":
            raise InvalidInput("camera frame carries no inline bytes; a frame is sent inline")
        if env.payload.content_type != FRAME_CONTENT_TYPE:
            raise InvalidInput(
                f"camera frame is {env.payload.content_type!r}, expected {FRAME_CONTENT_TYPE}"
            )
        array = codec_for(FRAME_CONTENT_TYPE).decode(env.payload.inline)
        if array.shape != INPUT_SHAPE[1:]:
            raise InvalidInput(
                f"camera frame is {list(array.shape)}, expected {list(INPUT_SHAPE[1:])}"
            )
        if array.dtype != np.uint8:
            raise InvalidInput(f"camera frame pixels are {array.dtype}, expected uint8")
        env.attributes.update(
            {
                "track": str(camera.track),
                "segment_start_m": f"{camera.start_m:g}",
                "segment_end_m": f"{camera.end_m:g}",
            }
        )
        env.payload.tensor.CopyFrom(to_tensor(model_input(array[None])[0]))
        return env


def aggregate_step(context: StepContext, **layout: Any) -> AggregateStep:
    """``layout``: the facility's (``facility``, ``tracks``, ``cameras_per_track``,
    ``track_length_m``), as :meth:`FacilityLayout.from_params` takes them."""
    return AggregateStep(FacilityLayout.from_params(**layout))


__all__ = [
    "CAPTURE_ATTRIBUTES",
    "FRAME_CONTENT_TYPE",
    "PLACEMENT_ATTRIBUTES",
    "AggregateStep",
    "aggregate_step",
]
