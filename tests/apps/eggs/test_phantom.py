"""The egg generator: reproducible, and its anatomy differs by class as the biology says."""

from __future__ import annotations

import numpy as np
import pytest

from inferstream.apps.eggs import LABELS
from inferstream.apps.eggs.phantom import (
    DEFAULT_MIX,
    EggSpec,
    anatomy,
    generate,
    make_specs,
    render,
    render_batch,
)
from inferstream.errors import ConfigError

SIZE = 128


def test_same_seed_gives_identical_bytes_and_another_seed_does_not() -> None:
    first = render_batch(make_specs(6, seed=5))
    again = render_batch(make_specs(6, seed=5))
    other = render_batch(make_specs(6, seed=6))
    assert first.dtype == np.uint16 and first.shape == (6, SIZE, SIZE)
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, other)


def test_a_scan_does_not_depend_on_its_batch_or_chunk() -> None:
    specs = make_specs(12, seed=9)
    assert make_specs(4, seed=9, start=8) == specs[8:]
    batch = render_batch(specs)
    assert np.array_equal(render(specs[10]), batch[10])
    chunks = [scans for _, scans in generate(12, seed=9, chunk=5)]
    assert [len(c) for c in chunks] == [5, 5, 2]
    assert np.array_equal(np.concatenate(chunks), batch)


def test_specs_carry_ids_trays_scanners_and_the_default_class_mix() -> None:
    specs = make_specs(3000, seed=1)
    assert specs[0].egg_id == "EGG-000000" and specs[40].tray == "TRAY-0001"
    assert {s.scanner for s in specs} == {"SCANNER-01", "SCANNER-02", "SCANNER-03", "SCANNER-04"}
    assert all(s.day == 12 for s in specs)
    shares = [sum(s.label == label for s in specs) / len(specs) for label in LABELS]
    assert shares == pytest.approx(list(DEFAULT_MIX), abs=0.03)
    only_dead = make_specs(50, seed=1, mix=(0, 0, 1))
    assert {s.label for s in only_dead} == {"not_developing"}


@pytest.mark.parametrize(
    ("difficulty", "mix"), [(1.5, DEFAULT_MIX), (0.5, (1.0, 1.0)), (0.5, (-1.0, 1.0, 1.0))]
)
def test_bad_settings_are_refused(difficulty: float, mix: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError):
        make_specs(3, difficulty=difficulty, mix=mix)


def _embryo_frame(specs: list[EggSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's (p, q) in each embryo's frame, in units of its semi-axes."""
    an = anatomy(specs, SIZE)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    ex, ey, phi = (col.reshape(-1, 1, 1) for col in an.embryo.T[:3])
    dx, dy = xx - ex, yy - ey
    return (dx * np.cos(phi) + dy * np.sin(phi)), (dy * np.cos(phi) - dx * np.sin(phi))


def _gonad_areas(specs: list[EggSpec]) -> np.ndarray:
    """(N, 2) bright-gonad pixel counts in windows at the left and right gonad sites."""
    an = anatomy(specs, SIZE)
    scans = render_batch(specs, SIZE, clean=True) / an.gain.reshape(-1, 1, 1)
    p, q = _embryo_frame(specs)
    ea, eb = an.embryo[:, 3].reshape(-1, 1, 1), an.embryo[:, 4].reshape(-1, 1, 1)
    long = an.gonad_long[:, 0].reshape(-1, 1, 1) + 0.7  # window: the left gonad's size
    bright = (scans > 0.7) & (scans < 0.95)  # gonads are brighter than any tissue nearby
    areas = np.zeros((len(specs), 2))
    for side, sign in enumerate((1, -1)):
        window = ((p - 0.05 * ea) / long) ** 2 + ((q - sign * 0.36 * eb) / (0.5 * long)) ** 2 < 1
        areas[:, side] = (bright & window).sum(axis=(1, 2))
    return areas


def test_females_have_one_left_gonad_and_males_two_alike() -> None:
    specs = make_specs(120, seed=21, mix=(1, 1, 0))
    areas = _gonad_areas(specs)
    female = np.array([s.label == "female" for s in specs])
    assert female.sum() > 30 and (~female).sum() > 30
    assert (areas[:, 0] >= 6).all()  # every developing embryo has a left gonad
    ratio = areas[:, 1] / areas[:, 0]
    assert ratio[female].max() < 0.5  # the right ovary regresses
    assert ratio[~female].min() > 0.6 and ratio[~female].max() < 1.6  # testes alike


def test_not_developing_eggs_have_no_embryo_or_gonads() -> None:
    specs = make_specs(80, seed=22, mix=(1, 0, 1))
    an = anatomy(specs, SIZE)
    scans = render_batch(specs, SIZE, clean=True) / an.gain.reshape(-1, 1, 1)
    p, q = _embryo_frame(specs)
    inside = (p / an.embryo[:, 3].reshape(-1, 1, 1)) ** 2 + (
        q / an.embryo[:, 4].reshape(-1, 1, 1)
    ) ** 2 < 0.8
    embryo_tissue = ((np.abs(scans - 0.42) < 0.02) & inside).sum(axis=(1, 2))
    developing = np.array([s.label != "not_developing" for s in specs])
    assert developing.sum() > 20 and (~developing).sum() > 20
    assert embryo_tissue[developing].min() > 150
    assert embryo_tissue[~developing].max() < 40
    assert (_gonad_areas(specs)[~developing] == 0).all()


def test_noise_bias_and_gain_change_the_scan_but_not_the_anatomy() -> None:
    spec = make_specs(1, seed=3)[0]
    clean, noisy = render(spec, clean=True).astype(float), render(spec).astype(float)
    assert not np.array_equal(clean, noisy)
    background = clean == 0
    assert noisy[background].mean() > 0  # Rician noise floor is positive in the air
    assert np.corrcoef(clean.ravel(), noisy.ravel())[0, 1] > 0.8
