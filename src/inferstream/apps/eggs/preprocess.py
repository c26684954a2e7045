"""Scan preprocessing: uint16 MRI slices -> standardised float32 model input.

The same :func:`preprocess_batch` runs in training and in serving, so the model never
sees data prepared another way. Per scan it

1. estimates the egg mask and the smooth bias field (intensity inhomogeneity times
   scanner gain) on a 32x32 thumbnail, by normalised Gaussian convolution inside the
   egg (batched matrix products, so the whole batch costs a few BLAS calls);
2. divides the scan by that field, which removes both bias and gain;
3. crops a square around the egg and resizes it to 64x64 (``cv2.INTER_AREA``);
4. standardises to zero mean and unit variance.

:func:`preprocess_step` wraps it as the ``preprocess_scan`` pipeline step.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from inferstream.envelope import Envelope, from_tensor, to_tensor
from inferstream.errors import ConfigError, InvalidInput
from inferstream.steps import Outcome, Step, StepContext

F32 = NDArray[np.float32]

OUT_SIZE = 64
MIN_SIDE = 32
#: The attribute the step sets to each egg's extent in its scan (see preprocess_with_extents).
EXTENT = "egg_extent"
_THUMB = 32
_BIAS_SIGMA = 5.0  # thumbnail pixels: wide enough to keep anatomy, narrow enough for the bias
_MASK_LEVEL = 0.35  # egg interior = thumbnail brighter than this share of the bright level
_MARGIN = 1.06  # crop a little wider than the egg so its rim survives the resize


@cache
def _gauss_matrix(n: int, sigma: float) -> F32:
    idx = np.arange(n, dtype=np.float32)
    mat: F32 = np.exp(-np.square(idx[:, None] - idx[None, :]) / (2 * sigma**2)).astype(np.float32)
    return mat


def _masks_and_bias(thumbs: F32) -> tuple[NDArray[np.bool_], F32]:
    """Egg masks and bias fields of (N, 32, 32) thumbnails."""
    mean = thumbs.mean(axis=(1, 2), keepdims=True)
    above = thumbs > mean
    bright = (thumbs * above).sum(axis=(1, 2), keepdims=True) / np.maximum(
        above.sum(axis=(1, 2), keepdims=True), 1
    )
    mask = thumbs > _MASK_LEVEL * bright
    g = _gauss_matrix(_THUMB, _BIAS_SIGMA)
    weight = g @ mask.astype(np.float32) @ g.T
    field = g @ (thumbs * mask) @ g.T
    # Outside the egg there is nothing to estimate; fall back to the bright level
    # so background noise stays near zero rather than being blown up.
    bias = np.where(weight > 0.05, field / np.maximum(weight, 1e-6), bright)
    return mask, np.maximum(bias, 1e-3 * np.maximum(bright, 1.0)).astype(np.float32)


def _square_box(mask: NDArray[np.bool_], height: int, width: int) -> tuple[int, int, int, int]:
    """The square crop box (y0, x0, side_y, side_x) around the egg of a 32x32 thumbnail
    mask, inside an image of ``height`` x ``width``.

    One image at a time in plain Python: the batches a worker sees under load hold a few
    scans, and two dozen NumPy calls on (N, 32) arrays cost more than the whole loop.
    """
    n = _THUMB
    left, top, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w == 0:  # no egg found: the whole image
        top, bottom, left, right = 0, n, 0, n
    else:
        bottom, right = top + h, left + w
    sy, sx = height / n, width / n
    cy, cx = (top + bottom) * sy / 2, (left + right) * sx / 2
    side = max((bottom - top) * sy, (right - left) * sx) * _MARGIN
    side_y, side_x = min(round(side), height), min(round(side), width)
    y0 = min(max(round(cy - side_y / 2), 0), height - side_y)
    x0 = min(max(round(cx - side_x / 2), 0), width - side_x)
    return y0, x0, side_y, side_x


def _preprocess_stack(stack: NDArray[Any]) -> tuple[F32, F32]:
    """(N, H, W) scans of one shape -> (N, 1, 64, 64), and each egg's extent: the side of
    its crop over the scan's (the not-an-egg guard reads it)."""
    n, height, width = stack.shape
    images = stack.astype(np.float32)
    thumbs = np.empty((n, _THUMB, _THUMB), dtype=np.float32)
    for image, thumb in zip(images, thumbs, strict=True):
        cv2.resize(image, (_THUMB, _THUMB), dst=thumb, interpolation=cv2.INTER_AREA)
    mask, bias = _masks_and_bias(thumbs)
    out = np.empty((n, 1, OUT_SIZE, OUT_SIZE), dtype=np.float32)
    extents = np.empty(n, dtype=np.float32)
    for i in range(n):
        y0, x0, sy, sx = _square_box(mask[i], height, width)
        extents[i] = max(sy / height, sx / width)
        # Per-image cv2 upsampling of the field beats a batched matrix product here.
        field = cv2.resize(bias[i], (width, height), interpolation=cv2.INTER_LINEAR)
        crop = images[i, y0 : y0 + sy, x0 : x0 + sx] / field[y0 : y0 + sy, x0 : x0 + sx]
        cv2.resize(crop, (OUT_SIZE, OUT_SIZE), dst=out[i, 0], interpolation=cv2.INTER_AREA)
    _standardise(out.reshape(n, -1))
    return out, extents


def _standardise(rows: F32) -> None:
    """Each row to zero mean and unit variance, in place. Along the rows' contiguous axis
    NumPy reduces 5x faster than over the (2, 3) axes of the 4-D batch (3.6 µs a scan
    against 18 at batch 64, measured); the variance is the rows' dot products."""
    rows -= rows.mean(axis=1, keepdims=True)
    variance = np.einsum("ij,ij->i", rows, rows) / rows.shape[1]
    rows /= (np.sqrt(variance) + 1e-6)[:, None]


def check_scan(image: NDArray[Any]) -> None:
    """Raise :class:`InvalidInput` unless ``image`` is a 2-D scan this module can handle."""
    if image.ndim != 2:
        raise InvalidInput(
            f"scan must be a 2-D image, got shape {list(image.shape)}; "
            "decode multi-frame DICOM into single slices first"
        )
    if min(image.shape) < MIN_SIDE:
        raise InvalidInput(f"scan {list(image.shape)} is smaller than {MIN_SIDE}x{MIN_SIDE}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InvalidInput(f"scan dtype {image.dtype} is not numeric")


def preprocess_batch(images: Sequence[NDArray[Any]] | NDArray[Any]) -> F32:
    """Scans (any 2-D numeric arrays, sizes may differ) -> float32 (N, 1, 64, 64)."""
    return preprocess_with_extents(images)[0]


def preprocess_with_extents(images: Sequence[NDArray[Any]] | NDArray[Any]) -> tuple[F32, F32]:
    """:func:`preprocess_batch`, and each egg's extent in its scan (N,)."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        for image in images[:1]:
            check_scan(image)
        return _preprocess_stack(images)
    for image in images:
        check_scan(image)
    if len({image.shape for image in images}) == 1:  # the usual batch: one scanner protocol
        return _preprocess_stack(np.stack(list(images)))
    out = np.empty((len(images), 1, OUT_SIZE, OUT_SIZE), dtype=np.float32)
    extents = np.empty(len(images), dtype=np.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():
        out[indices], extents[indices] = _preprocess_stack(np.stack([images[i] for i in indices]))
    return out, extents


def _scan_of(env: Envelope) -> NDArray[np.uint16]:
    if env.payload.WhichOneof("body") != "tensor":
        raise InvalidInput(
            f"preprocess_scan needs a decoded scan (tensor payload), got "
            f"{env.payload.WhichOneof('body') or 'no'} payload; put decode_dicom before it"
        )
    image = from_tensor(env.payload.tensor)
    if image.dtype != np.uint16 or image.ndim != 2:
        raise InvalidInput(
            f"preprocess_scan needs a 2-D uint16 scan, got {image.dtype} {list(image.shape)}"
        )
    check_scan(image)
    return image


class PreprocessStep(Step):
    """Replaces each scan tensor by its float32 (1, 64, 64) model input."""

    name = "preprocess_scan"

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        scans, slots = [], []
        for i, env in enumerate(batch):
            try:
                scans.append(_scan_of(env))
                slots.append(i)
            except InvalidInput as exc:
                outcomes[i] = exc
        inputs, extents = preprocess_with_extents(scans) if scans else (np.empty(0), np.empty(0))
        for slot, tensor, extent in zip(slots, inputs, extents, strict=True):
            out = Envelope()
            out.CopyFrom(batch[slot])
            out.payload.tensor.CopyFrom(to_tensor(tensor))
            out.attributes[EXTENT] = f"{extent:.4f}"
            outcomes[slot] = out
        return [o for o in outcomes if o is not None]


def preprocess_step(context: StepContext, **params: Any) -> PreprocessStep:
    """Step factory (``preprocess_scan`` in a pipeline file); takes no parameters."""
    if params:
        raise ConfigError(f"preprocess_scan takes no parameters; remove {sorted(params)}")
    return PreprocessStep()


__all__ = [
    "EXTENT",
    "OUT_SIZE",
    "PreprocessStep",
    "check_scan",
    "preprocess_batch",
    "preprocess_step",
    "preprocess_with_extents",
]
