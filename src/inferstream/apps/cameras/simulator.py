"""The facility simulator: cameras sending frames of a moving scene, some of them flaky.

Deterministic from a seed. Every ``frame_interval_ms`` of simulated time each live
camera sends one frame (a ``.npy`` strip) keyed by the facility, so one facility's
frames stay in order on one partition. Event time is ``epoch_us`` plus simulated time.
Flaky cameras drop out for spans of seconds; ``dead_camera`` stops for good at
``dead_from`` of the run: the state must degrade, never break. :class:`Emission` keeps
what was sent, for scoring the outputs against the truth.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from inferstream.apps.cameras.aggregate import FRAME_CONTENT_TYPE
from inferstream.apps.cameras.layout import Camera, FacilityLayout
from inferstream.apps.cameras.scene import FrameTruth, Scene, TrackTruth
from inferstream.bus import Bus, Record
from inferstream.envelope import Envelope, derive_id, new_envelope

FRAMES_TOPIC = "camera.frames"


@dataclass(frozen=True)
class SimSettings:
    duration_s: float = 60.0
    frame_interval_ms: int = 200
    seed: int = 7
    #: Share of cameras that drop out now and then (for 2-6 s, every ~15 s).
    flaky: float = 0.25
    #: A camera that stops sending for good, from ``dead_from`` of the run on.
    dead_camera: str | None = "t1c2"
    dead_from: float = 0.6


@dataclass
class Emission:
    """What the simulator sent: frame ids with their truth, and the ticks of each camera."""

    epoch_us: int
    frames: dict[str, tuple[str, float, FrameTruth]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def window_starts(self, size_ms: int) -> set[int]:
        """Starts (event time, µs) of the windows that received at least one frame."""
        size_us = size_ms * 1000
        return {
            (self.epoch_us + round(t * 1e6)) // size_us * size_us
            for _, t, _ in self.frames.values()
        }


class FacilitySimulator:
    def __init__(self, layout: FacilityLayout, settings: SimSettings) -> None:
        self.layout, self.settings = layout, settings
        self.scene = Scene(layout, settings.duration_s, settings.seed)
        self.outages = {camera.name: self._outages(i) for i, camera in enumerate(layout.cameras)}

    def _outages(self, index: int) -> list[tuple[float, float]]:
        s = self.settings
        rng = np.random.default_rng([s.seed, index])
        spans: list[tuple[float, float]] = []
        if rng.random() < s.flaky:
            t = float(rng.exponential(15.0))
            while t < s.duration_s:
                down = float(rng.uniform(2.0, 6.0))
                spans.append((t, t + down))
                t += down + float(rng.exponential(15.0))
        if self.layout.cameras[index].name == s.dead_camera:
            spans.append((s.dead_from * s.duration_s, float("inf")))
        return spans

    def alive(self, camera: str, t: float) -> bool:
        return not any(start <= t < end for start, end in self.outages[camera])

    @property
    def ticks(self) -> int:
        return int(self.settings.duration_s * 1000 // self.settings.frame_interval_ms)

    def tick_time(self, tick: int) -> float:
        return tick * self.settings.frame_interval_ms / 1000.0

    def track_truth(self, t: float) -> list[TrackTruth]:
        return [self.scene.track_truth(track, t) for track in range(self.layout.tracks)]

    def frames(self, tick: int) -> Iterator[tuple[Camera, FrameTruth, np.ndarray]]:
        """The frames the live cameras send at ``tick`` (pixels seeded per camera and tick)."""
        t = self.tick_time(tick)
        for index, camera in enumerate(self.layout.cameras):
            if self.alive(camera.name, t):
                rng = np.random.default_rng([self.settings.seed, index, tick])
                yield camera, self.scene.frame_truth(camera, t), self.scene.render(camera, t, rng)

    def envelope(
        self, camera: Camera, tick: int, image: np.ndarray, *, tenant: str, run: str, epoch_us: int
    ) -> Envelope:
        buffer = io.BytesIO()
        np.save(buffer, image, allow_pickle=False)
        t_ms = tick * self.settings.frame_interval_ms
        return new_envelope(
            buffer.getvalue(),
            FRAME_CONTENT_TYPE,
            tenant=tenant,
            key=self.layout.name,
            source=f"camera/{camera.name}",
            envelope_id=derive_id(f"{run}/{camera.name}/{tick}", "camera", 0),
            created_at_us=epoch_us + t_ms * 1000,
            attributes={
                "ref": f"{camera.name}@{t_ms}",
                "facility": self.layout.name,
                "camera": camera.name,
            },
        )

    def emit(
        self,
        bus: Bus,
        *,
        tenant: str,
        run: str,
        epoch_us: int,
        topic: str = FRAMES_TOPIC,
        speed: float | None = None,
        progress: Callable[[Emission], None] | None = None,
    ) -> Emission:
        """Send every tick's frames: ``speed`` simulated seconds per wall second, or as fast
        as it goes. Event time ``epoch_us`` should be about now (see :mod:`..demo`)."""
        out = Emission(epoch_us)
        for tick in range(self.ticks):
            batch = [
                (
                    cam,
                    truth,
                    self.envelope(cam, tick, image, tenant=tenant, run=run, epoch_us=epoch_us),
                )
                for cam, truth, image in self.frames(tick)
            ]
            bus.produce(
                topic,
                [
                    Record(key=self.layout.name.encode(), value=env.SerializeToString())
                    for _, _, env in batch
                ],
            )
            for cam, truth, env in batch:
                out.frames[env.id] = (cam.name, self.tick_time(tick), truth)
            if speed:
                ahead = self.tick_time(tick + 1) / speed - (time.monotonic() - out.started)
                if ahead > 0:
                    time.sleep(ahead)
            if progress and tick % 10 == 9:
                progress(out)
        return out


__all__ = ["FRAMES_TOPIC", "Emission", "FacilitySimulator", "SimSettings"]
