"""Synthetic photos for the imageops example, tests and benchmark: made here, never
downloaded. Each is a colour gradient with shapes, text and a little noise (so a blur
visibly changes it), of any size, deterministic for its seed."""

from __future__ import annotations

import cv2
import numpy as np

from inferstream.apps.imageops.operations import Image

#: The sizes the example sends: two squares and an odd one (width, height).
SIZES: tuple[tuple[int, int], ...] = ((512, 512), (1024, 1024), (333, 517))


def synthetic(width: int, height: int, seed: int = 0) -> Image:
    """A ``width`` x ``height`` BGR image, the same for the same seed."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    phase = float(rng.uniform(0, np.pi))
    image = np.empty((height, width, 3), np.float32)
    image[..., 0] = 255 * x * np.ones_like(y)
    image[..., 1] = 255 * y * np.ones_like(x)
    image[..., 2] = 127.5 * (1 + np.sin(6 * np.pi * (x + y) + phase))
    image += rng.normal(0.0, 8.0, image.shape).astype(np.float32)
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    side = min(width, height)
    for _ in range(6):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(pixels, centre, int(rng.integers(side // 20 + 1, side // 5 + 2)), colour, -1)
    cv2.putText(pixels, f"#{seed}", (side // 10, side // 3), cv2.FONT_HERSHEY_SIMPLEX,
                side / 200, (255, 255, 255), max(1, side // 150))  # fmt: skip
    return pixels


def encoded(width: int, height: int, seed: int = 0, kind: str = "png") -> bytes:
    """:func:`synthetic` as a ``png``, ``jpg`` or ``webp`` file."""
    ok, data = cv2.imencode(f".{kind}", synthetic(width, height, seed))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {kind} image")
    return bytes(data)
