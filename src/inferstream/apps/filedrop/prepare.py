"""The ``prepare`` step: a dropped image (PNG, JPEG or WebP, any size) becomes the
model's input, a float32 tensor (1, 32, 32) of grey levels from 0 to 1."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from inferstream.apps.filedrop.shapes import SIDE
from inferstream.blobs import batch_payloads
from inferstream.codecs import raster
from inferstream.envelope import Envelope, to_tensor
from inferstream.errors import InvalidInput
from inferstream.steps import Outcome, Step, StepContext

INPUT_SHAPE = (1, SIDE, SIDE)


def as_input(data: bytes) -> NDArray[np.float32]:
    """An encoded image as the model's input."""
    image = raster.decode(data)
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    if image.dtype != np.uint8:  # 16-bit PNG
        image = (image / 257).astype(np.uint8)
    if image.shape != (SIDE, SIDE):
        image = cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    return (image.astype(np.float32) / 255.0).reshape(INPUT_SHAPE)


class PrepareStep(Step):
    name = "prepare"

    def __init__(self, context: StepContext) -> None:
        self.blobs = context.blobs

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        payload = batch_payloads(batch, self.blobs)  # claim checks fetched together
        for env in batch:
            try:
                array = as_input(payload(env))
            except InvalidInput as exc:  # (a blob store that fails raises: retried)
                outcomes.append(exc)
                continue
            out = Envelope()
            out.CopyFrom(env)
            out.payload.tensor.CopyFrom(to_tensor(array))
            outcomes.append(out)
        return outcomes


def prepare_step(context: StepContext) -> PrepareStep:
    """Step factory (``prepare`` in the file-drop pipeline)."""
    return PrepareStep(context)
