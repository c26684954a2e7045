"""The facility as its cameras see it: tracks, the segment each camera covers, frame size.

One :class:`FacilityLayout` is shared by the simulator (what to render), the estimator
(where a camera's pixels lie on its track) and the fusion (which cameras to expect, so a
silent one is noticed). Positions are metres along a track from its west end.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

#: Frames are small grayscale strips: rows across the track, columns along it.
FRAME_HEIGHT = 16
FRAME_WIDTH = 48


@dataclass(frozen=True)
class Camera:
    """One camera: the segment ``[start_m, end_m)`` of one track it sees."""

    name: str
    track: int
    start_m: float
    end_m: float

    @property
    def span_m(self) -> float:
        return self.end_m - self.start_m

    def to_track(self, offset: float) -> float:
        """A position in the frame (0 = west edge, 1 = east edge) as metres on the track."""
        return self.start_m + offset * self.span_m

    def to_frame(self, position_m: float) -> float:
        return (position_m - self.start_m) / self.span_m


@dataclass(frozen=True)
class FacilityLayout:
    """``tracks`` parallel tracks, each seen end to end by ``cameras_per_track`` cameras."""

    name: str = "depot-1"
    tracks: int = 3
    cameras_per_track: int = 4
    track_length_m: float = 240.0

    @cached_property
    def cameras(self) -> tuple[Camera, ...]:
        span = self.track_length_m / self.cameras_per_track
        return tuple(
            Camera(f"t{track}c{k}", track, k * span, (k + 1) * span)
            for track in range(self.tracks)
            for k in range(self.cameras_per_track)
        )

    @cached_property
    def by_name(self) -> dict[str, Camera]:
        return {camera.name: camera for camera in self.cameras}

    @property
    def segment_m(self) -> float:
        return self.track_length_m / self.cameras_per_track

    @classmethod
    def from_params(
        cls,
        facility: str = "depot-1",
        tracks: int = 3,
        cameras_per_track: int = 4,
        track_length_m: float = 240.0,
    ) -> FacilityLayout:
        """A layout from a step's parameters in the pipeline file (the defaults: the
        simulator's depot)."""
        return cls(facility, int(tracks), int(cameras_per_track), float(track_length_m))


__all__ = ["FRAME_HEIGHT", "FRAME_WIDTH", "Camera", "FacilityLayout"]
