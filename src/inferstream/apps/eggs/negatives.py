"""Scans that are not egg scans, drawn in kinds a hatchery's scanner really meets: the
not-an-egg guard (:mod:`inferstream.apps.eggs.domain`) is measured on them.

Each kind is a generator of ``n`` uint16 slices from a seed: noise, an empty scan, a
smooth gradient, phantoms (a uniform disc, rings, a grid), other anatomy (a head-like
slice: a bright skull ring around textured tissue) and eggs seen through the wrong
field of view (zoomed in, tiny in a wide frame, cut by the edge). Public DICOM test
files of other subjects (a head MR, CT, ultrasound, X-ray) are the real-world check,
in the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from inferstream.apps.eggs.phantom import make_specs, render_batch

U16 = NDArray[np.uint16]
_SIZE = 128


def _grid(size: int = _SIZE) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    axis = np.linspace(-1.0, 1.0, size)
    xx, yy = np.meshgrid(axis, axis)
    return xx, yy


def _u16(image: NDArray[Any]) -> U16:
    clipped: U16 = np.clip(image, 0, 65535).astype(np.uint16)
    return clipped


def _noise(rng: np.random.Generator) -> U16:
    if rng.random() < 0.5:
        return _u16(rng.normal(rng.uniform(200, 3000), rng.uniform(50, 600), (_SIZE, _SIZE)))
    sigma = rng.uniform(50, 600)  # Rician: the magnitude of complex Gaussian noise
    real, imaginary = rng.normal(0, sigma, (2, _SIZE, _SIZE))
    return _u16(np.hypot(real, imaginary))


def _empty(rng: np.random.Generator) -> U16:
    return _u16(np.full((_SIZE, _SIZE), rng.integers(0, 60)) + rng.normal(0, 2, (_SIZE, _SIZE)))


def _gradient(rng: np.random.Generator) -> U16:
    xx, yy = _grid()
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle) + 1) * rng.uniform(300, 2000)
    return _u16(ramp + rng.normal(0, 20, ramp.shape))


def _disc_phantom(rng: np.random.Generator) -> U16:
    xx, yy = _grid()
    radius, (cx, cy) = rng.uniform(0.3, 0.9), rng.uniform(-0.2, 0.2, 2)
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < radius**2) * rng.uniform(500, 3000)
    return _u16(disc + np.abs(rng.normal(0, 50, disc.shape)))


def _ring_phantom(rng: np.random.Generator) -> U16:
    xx, yy = _grid()
    radius = np.hypot(xx, yy)
    rings = (np.sin(radius * rng.uniform(10, 40)) > 0) * (radius < 0.9) * rng.uniform(800, 3000)
    return _u16(rings + np.abs(rng.normal(0, 50, rings.shape)))


def _grid_phantom(rng: np.random.Generator) -> U16:
    xx, yy = _grid()
    cells = int(rng.integers(2, 12))
    board = ((np.floor((xx + 1) * cells) + np.floor((yy + 1) * cells)) % 2) * rng.uniform(800, 3000)
    return _u16(board + np.abs(rng.normal(0, 50, board.shape)))


def _head(rng: np.random.Generator) -> U16:
    """Another anatomy: an elliptic head, bright skull ring, textured tissue inside."""
    xx, yy = _grid()
    ellipse = (xx / rng.uniform(0.6, 0.9)) ** 2 + (yy / rng.uniform(0.7, 0.95)) ** 2
    texture = 800 + 400 * np.sin(xx * rng.uniform(5, 15)) * np.cos(yy * rng.uniform(5, 15))
    head = np.where(ellipse < 1, np.where(ellipse > 0.8, 2500.0, texture), 0.0)
    blurred = cv2.GaussianBlur(head.astype(np.float32), (5, 5), 1.0)
    return _u16(blurred + np.abs(rng.normal(0, 40, head.shape)))


def _eggs(n: int, seed: int) -> U16:
    return render_batch(make_specs(n, seed=seed), _SIZE)


def _zoomed(egg: U16, rng: np.random.Generator) -> U16:
    """The scanner's field of view too narrow: only the egg's middle is seen."""
    side = int(_SIZE / rng.uniform(2.0, 3.0))
    start = (_SIZE - side) // 2 + int(rng.integers(-10, 10))
    return _u16(cv2.resize(egg[start : start + side, start : start + side], (_SIZE, _SIZE)))


def _tiny(egg: U16, rng: np.random.Generator) -> U16:
    """The field of view far too wide: a small egg in a big empty frame."""
    frame = np.abs(rng.normal(0, 30, (512, 512)))
    side = int(rng.uniform(40, 70))
    y, x = rng.integers(0, 512 - side, 2)
    frame[y : y + side, x : x + side] = cv2.resize(egg, (side, side))
    return _u16(frame)


def _cut(egg: U16, rng: np.random.Generator) -> U16:
    """The egg off centre: a part of it outside the field of view."""
    shift = int(rng.uniform(40, 70))
    moved = np.pad(egg, ((0, 0), (shift, 0)))[:, :_SIZE]
    return moved if rng.random() < 0.5 else np.ascontiguousarray(moved.T)


_ONE: dict[str, Callable[[np.random.Generator], U16]] = {
    "noise": _noise,
    "empty": _empty,
    "gradient": _gradient,
    "disc phantom": _disc_phantom,
    "ring phantom": _ring_phantom,
    "grid phantom": _grid_phantom,
    "other anatomy (head-like)": _head,
}
_OF_EGG: dict[str, Callable[[U16, np.random.Generator], U16]] = {
    "egg zoomed in (narrow FOV)": _zoomed,
    "tiny egg (wide FOV)": _tiny,
    "egg cut by the FOV": _cut,
}
KINDS: tuple[str, ...] = (*_ONE, *_OF_EGG)


def negatives(kind: str, n: int, seed: int = 0) -> list[U16]:
    """``n`` slices of ``kind`` (one of :data:`KINDS`), the same for the same seed."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    if kind in _ONE:
        return [_ONE[kind](rng) for _ in range(n)]
    return [_OF_EGG[kind](egg, rng) for egg in _eggs(n, seed + 10_000)]


__all__ = ["KINDS", "negatives"]
