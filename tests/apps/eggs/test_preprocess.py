"""Preprocessing: shape, standardisation, bias and gain removal, and the pipeline step."""

from __future__ import annotations

import numpy as np
import pytest

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.apps.eggs.preprocess import (
    PreprocessStep,
    preprocess_batch,
    preprocess_with_extents,
)
from inferstream.envelope import Envelope, from_tensor, new_envelope, to_tensor
from inferstream.errors import ConfigError, InvalidInput
from inferstream.steps import StepContext, build_step

TENSOR = "application/x-inferstream-tensor"


@pytest.fixture(scope="module")
def scans() -> np.ndarray:
    return render_batch(make_specs(16, seed=31))


def _envelope(array: np.ndarray) -> Envelope:
    env = new_envelope(b"", TENSOR, key="egg")
    env.payload.tensor.CopyFrom(to_tensor(array))
    return env


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_output_is_standardised_float32_64x64(scans: np.ndarray) -> None:
    out = preprocess_batch(scans)
    assert out.shape == (16, 1, 64, 64) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert np.abs(out.mean(axis=(1, 2, 3))).max() < 1e-3
    assert np.abs(out.std(axis=(1, 2, 3)) - 1).max() < 1e-3


def test_scanner_gain_is_removed(scans: np.ndarray) -> None:
    brighter = (scans.astype(np.float64) * 2.7).astype(np.uint16)
    assert np.abs(preprocess_batch(brighter) - preprocess_batch(scans)).max() < 0.05


def test_a_smooth_bias_field_is_removed() -> None:
    specs = make_specs(8, seed=32)
    clean = render_batch(specs, clean=True).astype(np.float64)
    y, x = np.mgrid[-1:1:128j, -1:1:128j]
    biased = (clean * np.exp(0.3 * x - 0.2 * y + 0.15 * x * y)).astype(np.uint16)
    reference, corrected = preprocess_batch(clean.astype(np.uint16)), preprocess_batch(biased)
    # Without the correction this field leaves correlations of about 0.98 and a mean
    # absolute difference of about 0.12 (measured when the correction was written).
    assert min(_corr(r, c) for r, c in zip(reference, corrected, strict=True)) > 0.993
    assert np.abs(corrected - reference).mean() < 0.06


def test_the_crop_follows_the_egg(scans: np.ndarray) -> None:
    shifted = np.zeros_like(scans)
    shifted[:, 6:, 4:] = scans[:, :-6, :-4]  # same eggs, moved within the field of view
    out, moved = preprocess_batch(scans), preprocess_batch(shifted)
    assert min(_corr(a, b) for a, b in zip(out, moved, strict=True)) > 0.9


def test_scans_of_different_sizes_in_one_batch(scans: np.ndarray) -> None:
    small = render_batch(make_specs(2, seed=33), size=96)
    out = preprocess_batch([scans[0], small[0], scans[1], small[1]])
    assert out.shape == (4, 1, 64, 64)
    assert np.allclose(out[[0, 2]], preprocess_batch(scans[:2]))


def test_a_batch_gives_each_scan_what_it_gets_alone(scans: np.ndarray) -> None:
    """Workers batch whatever arrived together: a scan's model input and extent must
    not depend on its neighbours (crops are found one scan at a time)."""
    together, extents = preprocess_with_extents(scans)
    for scan, out, extent in zip(scans, together, extents, strict=True):
        alone, alone_extent = preprocess_with_extents(scan[None])
        assert np.array_equal(alone[0], out) and alone_extent[0] == extent


def test_a_scan_with_no_egg_is_cropped_whole() -> None:
    """A blank field of view has no egg to crop around: the whole scan is used."""
    noise = np.random.default_rng(5).integers(0, 40, size=(96, 128), dtype=np.uint16)
    out, extents = preprocess_with_extents(np.stack([noise, np.zeros_like(noise)]))
    assert out.shape == (2, 1, 64, 64) and np.isfinite(out).all()
    assert list(extents) == [1.0, 1.0]


def test_step_replaces_scans_by_model_input_and_refuses_bad_payloads(scans: np.ndarray) -> None:
    inline = new_envelope(b"\x00" * 10, "application/dicom")
    batch = [
        _envelope(scans[0]),
        _envelope(scans[1].astype(np.float32)),
        inline,
        _envelope(scans[:2]),
        _envelope(scans[2][:20]),
        _envelope(scans[3]),
    ]
    step = build_step("preprocess_scan", StepContext(pipeline="eggs", stage="prep"), {}, APP.steps)
    assert isinstance(step, PreprocessStep)
    outcomes = step.process(batch)
    assert len(outcomes) == len(batch)
    expected = preprocess_batch([scans[0], scans[3]])
    for slot, want in ((0, expected[0]), (5, expected[1])):
        out = outcomes[slot]
        assert isinstance(out, Envelope) and out.id == batch[slot].id
        assert out.payload.content_type == TENSOR
        assert np.array_equal(from_tensor(out.payload.tensor), want)
    for slot, reason in ((1, "uint16"), (2, "tensor payload"), (3, "2-D"), (4, "smaller")):
        assert isinstance(outcomes[slot], InvalidInput)
        assert reason in str(outcomes[slot])
    assert batch[0].payload.tensor.dtype == "uint16"  # the input envelope is left alone


def test_step_takes_no_parameters() -> None:
    with pytest.raises(ConfigError, match="no parameters"):
        build_step(
            "preprocess_scan", StepContext(pipeline="eggs", stage="prep"), {"size": 32}, APP.steps
        )
