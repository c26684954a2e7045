"""Labelled camera frames for training and held-out evaluation, and the model input.

Frames are drawn by the same :mod:`~inferstream.apps.cameras.scene` code the simulator
uses, at random times and cameras of random scenes, and turned into model input by
:func:`model_input`, which the serving step uses too: the models learn exactly what
they will see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from inferstream.apps.cameras.layout import FRAME_HEIGHT, FRAME_WIDTH, FacilityLayout
from inferstream.apps.cameras.scene import TYPES, VIEWS, Scene

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
#: Input shape of the camera models (channels, rows, columns).
INPUT_SHAPE = (1, FRAME_HEIGHT, FRAME_WIDTH)


def model_input(frames: NDArray[np.uint8]) -> F32:
    """(N, rows, columns) uint8 frames -> (N, 1, rows, columns) float32 in [0, 1]."""
    scaled: F32 = (frames.astype(np.float32) / 255.0)[:, None, :, :]
    return scaled


@dataclass(frozen=True)
class FrameSet:
    x: F32  # model input
    view: I64  # index into VIEWS
    offset: F32  # visible end's place in the frame, 0..1 (0.5 when none)
    kind: I64  # index into TYPES


def sample_frames(n: int, seed: int, scenes: int = 40, duration_s: float = 300.0) -> FrameSet:
    """``n`` frames of ``scenes`` random facilities (seeded), labelled from the truth."""
    rng = np.random.default_rng(seed)
    layout = FacilityLayout()
    built = [Scene(layout, duration_s, seed * 1000 + k) for k in range(scenes)]
    frames = np.empty((n, FRAME_HEIGHT, FRAME_WIDTH), np.uint8)
    view, kind = np.empty(n, np.int64), np.empty(n, np.int64)
    offset = np.empty(n, np.float32)
    for i in range(n):
        scene = built[int(rng.integers(scenes))]
        camera = layout.cameras[int(rng.integers(len(layout.cameras)))]
        t = float(rng.uniform(0.0, duration_s))
        truth = scene.frame_truth(camera, t)
        frames[i] = scene.render(camera, t, rng)
        view[i], offset[i] = VIEWS.index(truth.view), truth.offset
        kind[i] = TYPES.index(truth.kind)
    return FrameSet(model_input(frames), view, offset, kind)


__all__ = ["INPUT_SHAPE", "FrameSet", "model_input", "sample_frames"]
