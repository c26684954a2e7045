"""The facility-state estimator: fuse the latest estimate of every camera into one state.

The ``fuse`` step runs after the ``facility-state`` stage's window, whose output holds
the latest estimate of each camera that spoke in the window (``keep: latest_by:camera``)
as an ``EnvelopeBatch``. :func:`fuse` is the pure part: per track, a locomotive is there
when any camera sees some of it; its head and tail are where the cameras seeing them put
them. A camera of the layout with no estimate in the window is *missing*: the state is
``degraded`` and names it (and the track it leaves partly unseen); it is never an error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from inferstream.apps.cameras.layout import FacilityLayout
from inferstream.envelope import Envelope, EnvelopeBatch, ModelRole, Prediction, now_us
from inferstream.errors import InvalidInput
from inferstream.steps import Outcome, Step, StepContext

STATE_HEAD = "record"
STATE_CONTENT_TYPE = "application/json"
FUSION_MODEL = "facility_fusion"
FUSION_VERSION = "1.0.0"


@dataclass(frozen=True)
class Sighting:
    """One camera's latest estimate."""

    camera: str
    track: int
    view: str
    end_m: float | None = None
    confidence: float = 1.0


@dataclass(frozen=True)
class TrackState:
    track: int
    occupied: bool
    head_m: float | None = None
    tail_m: float | None = None
    cameras: tuple[str, ...] = ()  # cameras seeing the locomotive
    missing: tuple[str, ...] = ()  # the track's cameras that sent nothing


@dataclass(frozen=True)
class FacilityState:
    facility: str
    tracks: tuple[TrackState, ...]
    missing: tuple[str, ...] = ()
    #: The layout's measures, so a reader can draw the state without the pipeline file.
    track_length_m: float = 0.0
    cameras_per_track: int = 0
    unknown: tuple[str, ...] = field(default=())  # cameras the layout does not have

    @property
    def degraded(self) -> bool:
        return bool(self.missing)

    @property
    def locomotives(self) -> int:
        return sum(track.occupied for track in self.tracks)

    def to_json(self) -> str:
        data = asdict(self)
        data["degraded"] = self.degraded
        return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _best_end(sightings: Sequence[Sighting], view: str) -> float | None:
    ends = [s for s in sightings if s.view == view and s.end_m is not None]
    return max(ends, key=lambda s: s.confidence).end_m if ends else None


def fuse(layout: FacilityLayout, sightings: Sequence[Sighting]) -> FacilityState:
    """One facility state from the cameras' latest sightings (any number, any order)."""
    known = [s for s in sightings if s.camera in layout.by_name]
    seen = {s.camera for s in known}
    tracks = []
    for track in range(layout.tracks):
        on_track = [s for s in known if s.track == track]
        occupied = [s for s in on_track if s.view != "empty"]
        tracks.append(
            TrackState(
                track=track,
                occupied=bool(occupied),
                head_m=_best_end(occupied, "head"),
                tail_m=_best_end(occupied, "tail"),
                cameras=tuple(sorted(s.camera for s in occupied)),
                missing=tuple(
                    c.name for c in layout.cameras if c.track == track and c.name not in seen
                ),
            )
        )
    return FacilityState(
        facility=layout.name,
        tracks=tuple(tracks),
        missing=tuple(c.name for c in layout.cameras if c.name not in seen),
        track_length_m=layout.track_length_m,
        cameras_per_track=layout.cameras_per_track,
        unknown=tuple(sorted({s.camera for s in sightings} - set(layout.by_name))),
    )


def sighting(env: Envelope) -> Sighting:
    """An estimate envelope as a :class:`Sighting` (what the ``estimate`` step stamped)."""
    attributes = env.attributes
    try:
        end = attributes.get("end_m")
        score = max(
            (p.scores.get(p.label, 0.0) for p in env.predictions if p.head == "view"), default=0.0
        )
        return Sighting(
            attributes["camera"],
            int(attributes["track"]),
            attributes["view"],
            float(end) if end else None,
            float(score),
        )
    except (KeyError, ValueError) as exc:
        raise InvalidInput(f"estimate {env.id} is not a camera estimate: {exc!r}") from exc


class FuseStep(Step):
    """Window outputs -> facility-state records (``ref`` = facility@window start)."""

    name = "fuse"

    def __init__(self, layout: FacilityLayout, flow: str) -> None:
        self.layout, self.flow = layout, flow

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for env in batch:
            try:
                outcomes.append(self._one(env))
            except InvalidInput as exc:
                outcomes.append(exc)
        return outcomes

    def _one(self, env: Envelope) -> Envelope:
        members = EnvelopeBatch()
        try:
            members.ParseFromString(env.payload.inline)
        except Exception as exc:  # protobuf's DecodeError has no public base to name
            raise InvalidInput(f"window output {env.id} holds no envelopes: {exc}") from exc
        state = fuse(self.layout, [sighting(m) for m in members.envelopes])
        start, end = env.attributes["window.start_us"], env.attributes["window.end_us"]
        env.attributes.update(
            {
                "ref": f"{self.layout.name}@{start}",
                "facility": self.layout.name,
                "flow": self.flow,
                "window_start_us": start,
                "window_end_us": end,
                "cameras_seen": str(len(self.layout.cameras) - len(state.missing)),
                "cameras_expected": str(len(self.layout.cameras)),
                "missing": ",".join(state.missing),
                "degraded": str(state.degraded).lower(),
                "locomotives": str(state.locomotives),
                "state": state.to_json(),
            }
        )
        label = "degraded" if state.degraded else "complete"
        env.predictions.append(
            Prediction(
                model_name=FUSION_MODEL,
                model_version=FUSION_VERSION,
                role=ModelRole.MODEL_ROLE_CHAMPION,
                label=label,
                scores={label: 1.0},
                predicted_at_us=now_us(),
                head=STATE_HEAD,
            )
        )
        env.payload.content_type = STATE_CONTENT_TYPE
        env.payload.inline = state.to_json().encode()
        return env


def fuse_step(context: StepContext, *, flow: str = "prod", **layout: Any) -> FuseStep:
    """``layout``: the facility's (``facility``, ``tracks``, ``cameras_per_track``,
    ``track_length_m``), as :meth:`FacilityLayout.from_params` takes them."""
    return FuseStep(FacilityLayout.from_params(**layout), flow)


__all__ = ["FacilityState", "FuseStep", "Sighting", "TrackState", "fuse", "fuse_step", "sighting"]
