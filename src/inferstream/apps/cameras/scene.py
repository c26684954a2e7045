"""Locomotives moving on a facility's tracks, the truth at any time, and camera frames.

Deterministic from a seed: each track sees one locomotive at a time enter from one end,
run to a stop, wait, and leave by the other end; then, after a gap, the next. A
locomotive's *head* is its leading end (a tall bright cab in the pictures), its *tail*
the other (a dark buffer); its body carries the texture of its type. Locomotives are
longer than a camera's segment, so a camera sees at most one end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from inferstream.apps.cameras.layout import FRAME_HEIGHT, FRAME_WIDTH, Camera, FacilityLayout

#: What a camera sees, in the estimator's output order.
VIEWS: tuple[str, ...] = ("empty", "body", "head", "tail")
#: Locomotive types, in the type model's output order ("none": no locomotive in view).
TYPES: tuple[str, ...] = ("none", "shunter", "mainline", "freight")
View = Literal["empty", "body", "head", "tail"]

CAB_M = 3.0
BUFFER_M = 2.0
_BODY_ROWS = slice(5, 11)
_CAB_ROWS = slice(2, 14)
_BODY_LEVEL = {"shunter": 150.0, "mainline": 175.0, "freight": 125.0}


@dataclass(frozen=True)
class Locomotive:
    """One locomotive's visit to a track: in at ``enter_s``, out at ``exit_s``."""

    ident: str
    track: int
    kind: str
    length_m: float
    direction: int  # +1: runs east (head at the east end); -1: west
    speed_mps: float
    stop_at_m: float  # where its head stops
    dwell_s: float
    enter_s: float
    track_length_m: float

    @property
    def _start_m(self) -> float:
        return 0.0 if self.direction > 0 else self.track_length_m

    @property
    def _first_leg_s(self) -> float:
        return abs(self.stop_at_m - self._start_m) / self.speed_mps

    @property
    def exit_s(self) -> float:
        end = self.track_length_m + self.length_m if self.direction > 0 else -self.length_m
        second = abs(end - self.stop_at_m) / self.speed_mps
        return self.enter_s + self._first_leg_s + self.dwell_s + second

    def head_at(self, t: float) -> float:
        moving = t - self.enter_s
        if moving <= self._first_leg_s:
            return self._start_m + self.direction * self.speed_mps * max(moving, 0.0)
        leaving = max(moving - self._first_leg_s - self.dwell_s, 0.0)
        return self.stop_at_m + self.direction * self.speed_mps * leaving

    def tail_at(self, t: float) -> float:
        return self.head_at(t) - self.direction * self.length_m

    def present(self, t: float) -> bool:
        return self.enter_s <= t < self.exit_s


@dataclass(frozen=True)
class TrackTruth:
    """What is on one track at one time; an end off the track is ``None``."""

    track: int
    loco: str | None = None
    kind: str = "none"
    head_m: float | None = None
    tail_m: float | None = None


@dataclass(frozen=True)
class FrameTruth:
    """What one camera's frame shows."""

    view: View
    offset: float  # where the visible end lies in the frame, 0..1 (0.5 when none)
    kind: str
    loco: str | None


class Scene:
    """The locomotives of a facility over ``duration_s`` seconds, from ``seed``."""

    def __init__(self, layout: FacilityLayout, duration_s: float, seed: int) -> None:
        self.layout, self.duration_s, self.seed = layout, duration_s, seed
        rng = np.random.default_rng(seed)
        self.locomotives = tuple(
            loco for track in range(layout.tracks) for loco in self._visits(track, rng)
        )

    def _visits(self, track: int, rng: np.random.Generator) -> list[Locomotive]:
        visits: list[Locomotive] = []
        t = float(rng.uniform(0.0, 4.0))
        length = self.layout.track_length_m
        while t < self.duration_s:
            loco = Locomotive(
                ident=f"{self.layout.name}-t{track}-{len(visits)}",
                track=track,
                kind=TYPES[1 + int(rng.integers(3))],
                length_m=float(rng.uniform(1.2, 1.7) * self.layout.segment_m),
                direction=1 if rng.random() < 0.5 else -1,
                speed_mps=float(rng.uniform(6.0, 14.0)),
                stop_at_m=float(rng.uniform(0.35, 0.65) * length),
                dwell_s=float(rng.uniform(1.0, 6.0)),
                enter_s=t,
                track_length_m=length,
            )
            visits.append(loco)
            t = loco.exit_s + float(rng.uniform(1.0, 5.0))
        return visits

    def on_track(self, track: int, t: float) -> Locomotive | None:
        return next((v for v in self.locomotives if v.track == track and v.present(t)), None)

    def track_truth(self, track: int, t: float) -> TrackTruth:
        loco = self.on_track(track, t)
        if loco is None:
            return TrackTruth(track)
        head, tail = loco.head_at(t), loco.tail_at(t)
        length = self.layout.track_length_m
        return TrackTruth(
            track,
            loco.ident,
            loco.kind,
            head_m=head if 0.0 <= head < length else None,
            tail_m=tail if 0.0 <= tail < length else None,
        )

    def frame_truth(self, camera: Camera, t: float) -> FrameTruth:
        loco = self.on_track(camera.track, t)
        if loco is None:
            return FrameTruth("empty", 0.5, "none", None)
        head, tail = loco.head_at(t), loco.tail_at(t)
        if max(head, tail) <= camera.start_m or min(head, tail) >= camera.end_m:
            return FrameTruth("empty", 0.5, "none", None)
        if camera.start_m <= head < camera.end_m:
            return FrameTruth("head", camera.to_frame(head), loco.kind, loco.ident)
        if camera.start_m <= tail < camera.end_m:
            return FrameTruth("tail", camera.to_frame(tail), loco.kind, loco.ident)
        return FrameTruth("body", 0.5, loco.kind, loco.ident)

    def render(self, camera: Camera, t: float, rng: np.random.Generator) -> NDArray[np.uint8]:
        """The camera's frame at ``t``: noise, lighting, and the part of a locomotive in view."""
        return render_frame(camera, self.on_track(camera.track, t), t, rng)


def _coverage(lo: float, hi: float, camera: Camera) -> NDArray[np.float64]:
    """Per column, the share of its width that ``[lo, hi)`` (metres) covers."""
    edges = camera.start_m + np.arange(FRAME_WIDTH + 1) * camera.span_m / FRAME_WIDTH
    covered = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
    result: NDArray[np.float64] = covered / (camera.span_m / FRAME_WIDTH)
    return result


def render_frame(
    camera: Camera, loco: Locomotive | None, t: float, rng: np.random.Generator
) -> NDArray[np.uint8]:
    background = float(rng.uniform(25.0, 70.0))
    gain = float(rng.uniform(0.8, 1.2))
    image = np.full((FRAME_HEIGHT, FRAME_WIDTH), background)
    image += np.linspace(0.0, float(rng.uniform(-15.0, 15.0)), FRAME_WIDTH)[None, :]
    if loco is not None:
        _draw(image, camera, loco, t, gain)
    image += rng.normal(0.0, 10.0, image.shape)
    frame: NDArray[np.uint8] = np.clip(image, 0, 255).astype(np.uint8)
    return frame


def _draw(
    image: NDArray[np.float64], camera: Camera, loco: Locomotive, t: float, gain: float
) -> None:
    head, tail = loco.head_at(t), loco.tail_at(t)
    lo, hi = min(head, tail), max(head, tail)
    d = loco.direction
    body = _coverage(lo, hi, camera)
    level = _BODY_LEVEL[loco.kind] * gain
    rows = image[_BODY_ROWS]
    rows[:] = rows * (1 - body) + level * body
    if loco.kind == "mainline":
        image[7:9] -= 70.0 * body
    elif loco.kind == "freight":
        centres = camera.start_m + (np.arange(FRAME_WIDTH) + 0.5) * camera.span_m / FRAME_WIDTH
        ribs = (np.floor(centres / 4.0) % 2 == 0) * body
        image[_BODY_ROWS] -= 45.0 * ribs
    cab = _coverage(min(head, head - d * CAB_M), max(head, head - d * CAB_M), camera)
    cab_rows = image[_CAB_ROWS]
    cab_rows[:] = cab_rows * (1 - cab) + 235.0 * gain * cab
    buffer = _coverage(min(tail, tail + d * BUFFER_M), max(tail, tail + d * BUFFER_M), camera)
    rows = image[_BODY_ROWS]
    rows[:] = rows * (1 - buffer) + 10.0 * buffer


__all__ = [
    "TYPES",
    "VIEWS",
    "FrameTruth",
    "Locomotive",
    "Scene",
    "TrackTruth",
    "render_frame",
]
