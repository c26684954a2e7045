"""The ``detect_leaves`` step: find the leaves in a drone photo and fan it out into crops.

The shipped ``leaf_detector`` marks leaf pixels; connected components become boxes
(:func:`~inferstream.apps.leaves.vision.boxes_from_heatmap`). Each crop is written to
the blob store at ``<tenant>/<position_id>/<date>/<cropper_model_id>/
<cropper_model_version>/<leaf_crop_idx>.png`` and becomes one message (a list outcome:
the worker gives each child its id and fan-out frame) whose payload is the graders'
input tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from inferstream.apps.leaves.simulator import decode_png, encode_png
from inferstream.apps.leaves.vision import (
    Box,
    boxes_from_heatmap,
    crop_image,
    crop_tensor,
    photo_tensor,
)
from inferstream.blobs import BlobStore, batch_payloads
from inferstream.classify import Model, load_model
from inferstream.envelope import Envelope, to_tensor
from inferstream.errors import BlobError, ConfigError, InvalidInput
from inferstream.steps import Outcome, Step, StepContext

DEFAULT_MODEL = "leaf_detector"
_NEEDED = ("position_id", "date")


def crop_key(env: Envelope, model: Model, index: int) -> str:
    """The crop's key under its tenant's folder."""
    info = model.info
    position, day = env.attributes["position_id"], env.attributes["date"]
    return f"{position}/{day}/{info.name}/{info.version}/{index}.png"


class DetectLeaves(Step):
    name = "detect_leaves"

    def __init__(self, model: Model, blobs: BlobStore) -> None:
        self.model = model
        self.blobs = blobs

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        images, slots = [], []
        payload = batch_payloads(batch, self.blobs)  # claim checks fetched together
        for i, env in enumerate(batch):
            try:
                images.append(self._image(env, payload))
                slots.append(i)
            except InvalidInput as exc:
                outcomes[i] = exc
        if images:
            heatmaps = self.model.logits(np.stack([photo_tensor(im) for im in images]))
            for slot, image, heatmap in zip(slots, images, heatmaps, strict=True):
                boxes = boxes_from_heatmap(heatmap[0])
                outcomes[slot] = [
                    self._crop(batch[slot], image, box, k) for k, box in enumerate(boxes)
                ]
        return [o for o in outcomes if o is not None]

    def _image(self, env: Envelope, payload: Callable[[Envelope], bytes]) -> np.ndarray:
        missing = [name for name in _NEEDED if not env.attributes.get(name)]
        if missing:
            raise InvalidInput(f"leaf photo {env.id} lacks attributes {', '.join(missing)}")
        try:
            image = decode_png(payload(env))
        except (BlobError, ValueError) as exc:
            raise InvalidInput(f"leaf photo {env.id}: {exc}") from exc
        if image.shape[:2] != self.model.info.input_shape[1:]:
            raise InvalidInput(
                f"leaf photo {env.id} is {image.shape[1]}x{image.shape[0]}, the detector takes "
                f"{self.model.info.input_shape[2]}x{self.model.info.input_shape[1]}"
            )
        return image

    def _crop(self, env: Envelope, image: np.ndarray, box: Box, index: int) -> Envelope:
        pixels = crop_image(image, box)
        key = crop_key(env, self.model, index)
        self.blobs.put_at(key, encode_png(pixels), env.tenant)
        crop = Envelope()
        crop.CopyFrom(env)
        crop.payload.Clear()
        crop.payload.content_type = "application/x-tensor"
        crop.payload.tensor.CopyFrom(to_tensor(crop_tensor(pixels)))
        position, day = env.attributes["position_id"], env.attributes["date"]
        crop.attributes.update(
            {
                "leaf_crop_idx": str(index),
                "leaf_id": f"{position}/{day}/{index}",
                "crop_path": f"{env.tenant}/{key}",
                "box": ",".join(map(str, box)),
                "cropper_model_id": self.model.info.name,
                "cropper_model_version": self.model.info.version,
            }
        )
        return crop


def detect_step(context: StepContext, model: str = DEFAULT_MODEL) -> DetectLeaves:
    """Step factory (``detect_leaves``): ``model`` names the detector (default the shipped one)."""
    if context.blobs is None:
        raise ConfigError(f"stage {context.stage!r}: detect_leaves writes crops; set 'blobs:'")
    return DetectLeaves(load_model(model), context.blobs)
