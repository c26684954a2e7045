"""The shipped camera models, measured on held-out frames through the serving code."""

from __future__ import annotations

import io

import numpy as np
import pytest

from inferstream.apps.cameras import APP
from inferstream.apps.cameras.aggregate import AggregateStep
from inferstream.apps.cameras.estimate import EstimateStep
from inferstream.apps.cameras.frames import model_input
from inferstream.apps.cameras.layout import FacilityLayout
from inferstream.apps.cameras.model_card import evaluate_all
from inferstream.apps.cameras.simulator import FacilitySimulator, SimSettings
from inferstream.classify import load_model
from inferstream.envelope import Envelope, from_tensor, new_envelope
from inferstream.errors import InvalidInput

#: Floors a little under what the shipped models measure (docs/cameras-model-card.md).
FLOORS = {"camera_view": 0.98, "camera_view_dev": 0.90, "loco_type": 0.92}


@pytest.fixture(scope="module")
def figures() -> dict[str, object]:
    return {f.name: f for f in evaluate_all(APP.models_dir, n=2000, seed=2024)}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_each_model_beats_its_floor_on_frames_it_never_saw(name: str, figures: dict) -> None:
    assert figures[name].accuracy >= FLOORS[name], figures[name]


def test_the_production_estimator_places_ends_within_a_pixel_or_two(figures: dict) -> None:
    assert figures["camera_view"].end_mae_m <= 1.5, figures["camera_view"]


def test_the_step_stamps_view_and_position_on_the_track() -> None:
    sim = FacilitySimulator(FacilityLayout(), SimSettings(duration_s=30, seed=11))
    batch, truths = [], []
    for tick in range(0, sim.ticks, 3):
        for camera, truth, image in sim.frames(tick):
            batch.append(sim.envelope(camera, tick, image, tenant="t", run="r", epoch_us=0))
            truths.append((camera, truth))
    images = AggregateStep(sim.layout).process(batch)
    outs = EstimateStep(load_model("camera_view")).process(images)
    right, errors = 0, []
    for out, (camera, truth) in zip(outs, truths, strict=True):
        assert isinstance(out, Envelope) and out.payload.WhichOneof("body") is None
        right += out.attributes["view"] == truth.view
        if out.attributes["view"] == truth.view and truth.view in ("head", "tail"):
            errors.append(abs(float(out.attributes["end_m"]) - camera.to_track(truth.offset)))
    assert right / len(outs) >= 0.97
    assert sum(errors) / len(errors) < 1.5 and max(errors) < 12.0


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_the_aggregator_places_each_frame_from_the_layout_and_decodes_it_once() -> None:
    layout = FacilityLayout()
    sim = FacilitySimulator(layout, SimSettings(duration_s=2, seed=5))
    frames = [
        (c, sim.envelope(c, 0, img, tenant="t", run="r", epoch_us=0)) for c, _, img in sim.frames(0)
    ]
    assert all("track" not in env.attributes for _, env in frames)  # cameras name only themselves
    pixels = [np.load(io.BytesIO(env.payload.inline)) for _, env in frames]
    images = AggregateStep(layout).process([env for _, env in frames])
    for (camera, _), strip, image in zip(frames, pixels, images, strict=True):
        assert isinstance(image, Envelope)
        assert image.attributes["track"] == str(camera.track)
        assert float(image.attributes["segment_start_m"]) == camera.start_m
        assert float(image.attributes["segment_end_m"]) == camera.end_m
        tensor = from_tensor(image.payload.tensor)
        assert tensor.dtype == np.float32 and tensor.shape == (1, 16, 48)
        assert np.array_equal(tensor, model_input(strip[None])[0])


def test_a_frame_that_fails_a_check_is_a_dead_letter_naming_what_is_wrong() -> None:
    good = {"camera": "t0c0", "facility": "depot-1"}
    strip = np.zeros((16, 48), np.uint8)
    cases = {
        "expected [16, 48]": new_envelope(
            _npy(np.zeros((8, 8), np.uint8)), "application/x-npy", attributes=good
        ),
        "expected uint8": new_envelope(
            _npy(strip.astype(np.int16)), "application/x-npy", attributes=good
        ),
        "lacks attributes ['camera', 'facility']": new_envelope(_npy(strip), "application/x-npy"),
        "camera 't9c9' is not in facility 'depot-1'": new_envelope(
            _npy(strip), "application/x-npy", attributes={**good, "camera": "t9c9"}
        ),
        "this aggregator serves 'depot-1'": new_envelope(
            _npy(strip), "application/x-npy", attributes={**good, "facility": "yard-7"}
        ),
        "expected application/x-npy": new_envelope(b"\x89PNG", "image/png", attributes=good),
    }
    outs = AggregateStep(FacilityLayout()).process(list(cases.values()))
    for reason, out in zip(cases, outs, strict=True):
        assert isinstance(out, InvalidInput) and reason in str(out), (reason, out)


def test_the_estimator_refuses_a_frame_that_was_not_aggregated() -> None:
    raw = new_envelope(
        _npy(np.zeros((16, 48), np.uint8)), "application/x-npy", attributes={"camera": "t0c0"}
    )
    (out,) = EstimateStep(load_model("camera_view")).process([raw])
    assert isinstance(out, InvalidInput) and "aggregate stage" in str(out)
