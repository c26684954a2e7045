"""Fusion of per-camera sightings into one facility state, and the ``fuse`` step."""

from __future__ import annotations

import json

from inferstream.apps.cameras.fusion import FuseStep, Sighting, fuse
from inferstream.apps.cameras.layout import FacilityLayout
from inferstream.envelope import Envelope, EnvelopeBatch, Prediction, new_envelope
from inferstream.errors import InvalidInput

LAYOUT = FacilityLayout(tracks=2, cameras_per_track=2, track_length_m=120.0)


def everyone_empty() -> list[Sighting]:
    return [Sighting(c.name, c.track, "empty") for c in LAYOUT.cameras]


def test_a_locomotive_seen_by_two_cameras_is_one_with_both_ends() -> None:
    sightings = everyone_empty()
    sightings[0] = Sighting("t0c0", 0, "tail", 20.0, 0.9)
    sightings[1] = Sighting("t0c1", 0, "head", 95.5, 0.8)
    state = fuse(LAYOUT, sightings)
    track = state.tracks[0]
    assert (track.occupied, track.head_m, track.tail_m) == (True, 95.5, 20.0)
    assert track.cameras == ("t0c0", "t0c1")
    assert not state.tracks[1].occupied
    assert (state.degraded, state.locomotives) == (False, 1)


def test_a_body_only_view_occupies_the_track_without_ends() -> None:
    sightings = everyone_empty()
    sightings[2] = Sighting("t1c0", 1, "body")
    track = fuse(LAYOUT, sightings).tracks[1]
    assert (track.occupied, track.head_m, track.tail_m) == (True, None, None)


def test_two_heads_disagreeing_keep_the_more_confident() -> None:
    sightings = [Sighting("t0c0", 0, "head", 10.0, 0.6), Sighting("t0c1", 0, "head", 70.0, 0.9)]
    assert fuse(LAYOUT, sightings).tracks[0].head_m == 70.0


def test_a_silent_camera_degrades_the_state_and_is_named() -> None:
    sightings = [s for s in everyone_empty() if s.camera != "t1c1"]
    state = fuse(LAYOUT, sightings)
    assert state.degraded and state.missing == ("t1c1",)
    assert state.tracks[1].missing == ("t1c1",) and state.tracks[0].missing == ()


def test_no_camera_at_all_is_a_degraded_empty_state_not_an_error() -> None:
    state = fuse(LAYOUT, [])
    assert state.degraded and len(state.missing) == 4 and state.locomotives == 0


def test_an_unknown_camera_is_noted_and_ignored() -> None:
    state = fuse(LAYOUT, [*everyone_empty(), Sighting("t9c9", 9, "head", 1.0)])
    assert state.unknown == ("t9c9",) and not state.degraded and state.locomotives == 0


def _estimate(camera: str, track: int, view: str, end: str | None = None) -> Envelope:
    attrs = {"camera": camera, "track": str(track), "view": view}
    env = new_envelope(
        b"", "application/x-npy", attributes={**attrs, **({"end_m": end} if end else {})}
    )
    env.predictions.append(Prediction(label=view, scores={view: 0.9}, head="view"))
    return env


def _window(members: list[Envelope]) -> Envelope:
    out = new_envelope(
        EnvelopeBatch(envelopes=members).SerializeToString(),
        "application/x-inferstream-envelopes",
        attributes={"window.start_us": "1000000", "window.end_us": "2000000"},
    )
    return out


def test_the_step_makes_one_state_record_per_window() -> None:
    step = FuseStep(LAYOUT, "dev")
    members = [
        _estimate("t0c0", 0, "head", "12.5"),
        _estimate("t0c1", 0, "body"),
        _estimate("t1c0", 1, "empty"),
    ]
    (out,) = step.process([_window(members)])
    assert isinstance(out, Envelope)
    assert out.attributes["ref"] == "depot-1@1000000"
    assert out.attributes["flow"] == "dev" and out.attributes["degraded"] == "true"
    assert out.attributes["missing"] == "t1c1" and out.attributes["cameras_seen"] == "3"
    assert out.predictions[-1].head == "record" and out.predictions[-1].label == "degraded"
    state = json.loads(out.attributes["state"])
    assert state["tracks"][0]["head_m"] == 12.5 and state["degraded"]


def test_a_window_without_envelopes_is_a_dead_letter_with_its_reason() -> None:
    bad = _window([])
    bad.payload.inline = b"\xff\xff not a batch"
    (out,) = FuseStep(LAYOUT, "prod").process([bad])
    assert isinstance(out, InvalidInput)
