"""The facility simulator: deterministic, truthful, and flaky as told."""

from __future__ import annotations

import itertools

import numpy as np

from inferstream.apps.cameras.layout import FacilityLayout
from inferstream.apps.cameras.simulator import FacilitySimulator, SimSettings

LAYOUT = FacilityLayout()


def test_the_same_seed_gives_the_same_scene_frames_and_outages() -> None:
    a = FacilitySimulator(LAYOUT, SimSettings(duration_s=20, seed=5))
    b = FacilitySimulator(LAYOUT, SimSettings(duration_s=20, seed=5))
    assert a.scene.locomotives == b.scene.locomotives and a.outages == b.outages
    for tick in (0, 37, 99):
        fa, fb = list(a.frames(tick)), list(b.frames(tick))
        assert [(c, t) for c, t, _ in fa] == [(c, t) for c, t, _ in fb]
        assert all(np.array_equal(x, y) for (_, _, x), (_, _, y) in zip(fa, fb, strict=True))


def test_another_seed_gives_another_scene() -> None:
    a = FacilitySimulator(LAYOUT, SimSettings(duration_s=20, seed=5))
    b = FacilitySimulator(LAYOUT, SimSettings(duration_s=20, seed=6))
    assert a.scene.locomotives != b.scene.locomotives


def test_locomotives_enter_move_and_leave_one_at_a_time_per_track() -> None:
    sim = FacilitySimulator(LAYOUT, SimSettings(duration_s=300, seed=1))
    for track in range(LAYOUT.tracks):
        visits = [v for v in sim.scene.locomotives if v.track == track]
        assert len(visits) >= 2
        for before, after in itertools.pairwise(visits):
            assert before.exit_s < after.enter_s
        first = visits[0]
        assert first.head_at(first.enter_s) in (0.0, LAYOUT.track_length_m)
        gone = first.tail_at(first.exit_s)
        assert gone <= 0.0 + 1e-6 or gone >= LAYOUT.track_length_m - 1e-6


def test_a_camera_sees_at_most_one_end_and_frames_match_the_truth() -> None:
    sim = FacilitySimulator(LAYOUT, SimSettings(duration_s=60, seed=2))
    for tick in range(0, sim.ticks, 7):
        t = sim.tick_time(tick)
        truth = sim.track_truth(t)
        for camera, frame_truth, image in sim.frames(tick):
            assert image.shape == (16, 48) and image.dtype == np.uint8
            track = truth[camera.track]
            if frame_truth.view == "head":
                assert track.head_m is not None and camera.start_m <= track.head_m < camera.end_m
            if frame_truth.view == "empty" and track.loco is None:
                assert frame_truth.loco is None


def test_the_dead_camera_stops_for_good_and_flaky_ones_come_back() -> None:
    settings = SimSettings(duration_s=100, seed=3, flaky=1.0, dead_camera="t1c2", dead_from=0.5)
    sim = FacilitySimulator(LAYOUT, settings)
    assert sim.alive("t1c2", 10.0) or any(s < 10.0 for s, _ in sim.outages["t1c2"])
    assert not any(sim.alive("t1c2", t) for t in (50.0, 75.0, 99.9))
    flaky = [c.name for c in LAYOUT.cameras if c.name != "t1c2"]
    assert all(sim.outages[c] for c in flaky)
    assert all(any(sim.alive(c, t) for t in np.arange(0, 100, 0.2)) for c in flaky)
