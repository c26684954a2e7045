"""Images of simple shapes, drawn from a seed: what the bundled file-drop example drops.

A stand-in for a user's own images and classes: a circle, a square or a triangle,
light on a darker background, placed and sized a little differently each time, with
sensor noise of varying strength. Small enough to learn in a second on a CPU, hard
enough that a model learnt from a dozen images is clearly worse than one learnt from
a few hundred.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

KINDS = ("circle", "square", "triangle")
SIDE = 32


def draw(kind: str, rng: np.random.Generator) -> NDArray[np.uint8]:
    """One ``SIDE`` x ``SIDE`` grey image of ``kind``."""
    image = np.full((SIDE, SIDE), rng.uniform(20, 60), np.float32)
    cx = SIDE // 2 + int(rng.integers(-3, 4))
    cy = SIDE // 2 + int(rng.integers(-3, 4))
    r = int(rng.integers(7, 11))
    shade = float(rng.uniform(150, 230))
    if kind == "circle":
        cv2.circle(image, (cx, cy), r, shade, -1)
    elif kind == "square":
        cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), shade, -1)
    elif kind == "triangle":
        corners = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(image, [corners], shade)
    else:
        raise ValueError(f"no shape {kind!r}; the shapes are {', '.join(KINDS)}")
    image += rng.normal(0.0, rng.uniform(10, 35), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def png(image: NDArray[np.uint8]) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("OpenCV could not encode the image as PNG")
    return bytes(encoded.tobytes())


@dataclass(frozen=True)
class Shape:
    name: str  # the file's name without suffix: the subject
    kind: str  # the truth
    image: NDArray[np.uint8]


def shapes(count: int, seed: int, prefix: str = "img") -> Iterator[Shape]:
    """``count`` shapes of random kinds from ``seed``, named ``<prefix>-<seed>-<i>``."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        kind = KINDS[int(rng.integers(0, len(KINDS)))]
        yield Shape(f"{prefix}-{seed}-{i:05d}", kind, draw(kind, rng))
