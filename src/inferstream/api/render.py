"""Scans as 8-bit PNG for people: windowing of 16-bit MR images, re-encoding of uploads."""

from __future__ import annotations

import io

import cv2
import numpy as np

from inferstream.api.errors import NotFound
from inferstream.api.images import DICOM, NPY
from inferstream.eggs.dicom import InvalidScan, decode


def window(pixels: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Map the [low, high] percentile range to 0..255, so the egg fills the grey scale."""
    values = pixels.astype(np.float32)
    low, high = np.percentile(values, [low_pct, high_pct])
    span = max(float(high - low), 1e-6)
    scaled = np.clip((values - low) / span, 0.0, 1.0) * 255.0
    result: np.ndarray = np.round(scaled).astype(np.uint8)
    return result


def to_png(data: bytes, content_type: str) -> bytes:
    """A PNG of a stored scan (DICOM, PNG, JPEG or .npy bytes)."""
    try:
        pixels = _pixels(data, content_type)
    except (InvalidScan, ValueError) as exc:
        raise NotFound(f"the stored scan can no longer be rendered: {exc}") from exc
    if pixels.dtype != np.uint8:
        pixels = window(pixels if pixels.ndim == 2 else pixels[..., 0])
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise NotFound("the stored scan could not be encoded as PNG")
    return bytes(encoded)


def _pixels(data: bytes, content_type: str) -> np.ndarray:
    if content_type == DICOM:
        return np.asarray(decode(data).pixels)
    if content_type == NPY:
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("OpenCV could not decode it")
    return np.asarray(image)
