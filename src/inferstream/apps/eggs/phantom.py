"""Synthetic day-12 egg MRI slices: the data set the flagship is built and tested on.

No egg MRI data set is available offline, so this module draws one. Each scan is a
2-D uint16 slice of an egg whose anatomy follows the biology:

- the shell gives almost no MR signal (a dark rim), albumen is bright, the yolk is
  darker, and an air cell sits at the blunt end;
- a developing embryo lies on the yolk with a head, an eye, paired mesonephric
  kidneys and paired gonads. In females only the left gonad develops (the right one
  regresses: small or absent); in males both testes are present and alike in size;
- a not-developing egg has no embryo: an infertile egg shows a small blastoderm
  spot, a dead one a blood ring around a shrunken remnant.

MRI artefacts: Rician noise, a smooth multiplicative bias field, scanner gain, and
varying egg size, position and orientation. ``difficulty`` (0..1) scales the noise,
the bias field and how subtle the female gonad asymmetry is.

Every scan is drawn from its own :attr:`EggSpec.seed`, so a scan's pixels do not
depend on which batch renders it. Geometry is vectorised over the batch with NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from inferstream.apps.eggs import LABELS
from inferstream.errors import ConfigError

F32 = NDArray[np.float32]

#: Default difficulty: tuned so the shipped model is accurate but not perfect.
DEFAULT_DIFFICULTY = 0.5
#: Class mix of a commercial hatchery: female, male, not developing.
DEFAULT_MIX: tuple[float, float, float] = (0.46, 0.46, 0.08)
DEFAULT_SIZE = 128
INCUBATION_DAY = 12
EGGS_PER_TRAY = 36
#: Albumen signal (counts) of each simulated scanner before per-scan jitter.
SCANNER_GAINS: tuple[float, ...] = (1800.0, 2600.0, 3400.0, 1200.0)

_EPOCH = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
_SUB_BATCH = 32
_N_UNIFORMS = 32  # per-scan random draws; fixed so adding a draw never shifts the others


@dataclass(frozen=True)
class EggSpec:
    """Everything needed to render one scan; the label is the ground truth."""

    egg_id: str
    label: str
    tray: str
    scanner: str
    day: int = INCUBATION_DAY
    difficulty: float = DEFAULT_DIFFICULTY
    seed: int = 0
    acquired_at: datetime = _EPOCH


def _check(difficulty: float, mix: Sequence[float]) -> NDArray[np.float64]:
    if not 0.0 <= difficulty <= 1.0:
        raise ConfigError(f"difficulty must lie in 0..1, got {difficulty}")
    weights = np.asarray(mix, dtype=np.float64)
    if weights.shape != (len(LABELS),) or (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError(
            f"mix must be {len(LABELS)} non-negative weights for {LABELS}, got {list(mix)}"
        )
    normalised: NDArray[np.float64] = weights / weights.sum()
    return normalised


def make_specs(
    n: int,
    seed: int = 0,
    difficulty: float = DEFAULT_DIFFICULTY,
    mix: Sequence[float] = DEFAULT_MIX,
    start: int = 0,
) -> list[EggSpec]:
    """``n`` reproducible egg specs; ``start`` offsets the egg numbers (for chunking)."""
    weights = _check(difficulty, mix)
    specs = []
    for i in range(start, start + n):
        # One seed per egg, derived from (seed, index): chunking never changes an egg.
        egg_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        rng = np.random.default_rng(egg_seed)
        label = LABELS[int(rng.choice(len(LABELS), p=weights))]
        specs.append(
            EggSpec(
                egg_id=f"EGG-{i:06d}",
                label=label,
                tray=f"TRAY-{i // EGGS_PER_TRAY:04d}",
                scanner=f"SCANNER-{int(rng.integers(len(SCANNER_GAINS))) + 1:02d}",
                difficulty=difficulty,
                seed=egg_seed,
                acquired_at=_EPOCH + timedelta(days=seed % 365, seconds=2.5 * i),
            )
        )
    return specs


@dataclass(frozen=True)
class Anatomy:
    """Per-scan geometry and contrast of a batch, in pixels; arrays have shape (N,)."""

    egg: F32  # (N, 5): centre x, centre y, long-axis angle, long and short semi-axes
    yolk: F32  # (N, 4): centre u, v in the egg's frame, semi-axes
    embryo: F32  # (N, 5): centre x, centre y, body-axis angle, long and short semi-axes
    gonad_long: F32  # (N, 2): long semi-axis of the left and right gonad
    gonad_signal: F32
    label: NDArray[np.int64]
    dead: NDArray[np.bool_]
    noise: F32
    bias: F32  # (N, 5): coefficients of x, y, x^2, y^2, xy in the log bias field
    gain: F32


# Where the gonads sit in the embryo's frame, as fractions of its semi-axes.
_GONAD_P, _GONAD_Q = 0.05, 0.36


def _lerp(u: F32, lo: float, hi: float) -> F32:
    return (lo + (hi - lo) * u).astype(np.float32)


def _gonads(u: F32, label: NDArray[np.int64], a: F32, d: F32) -> tuple[F32, F32]:
    """Left/right gonad long semi-axes: the biology the classifier must see."""
    female = label == 0
    # Females: left ovary slightly enlarged, right regressed to ratio r in [0, rmax].
    # Males: two testes of similar size. Difficulty narrows the gap between the two.
    left = _lerp(u[:, 0], 0.075, 0.09) * a
    left *= np.where(female, _lerp(u[:, 1], 1.0, 1.15), _lerp(u[:, 1], 0.88, 1.05))
    female_ratio = u[:, 2] * (0.35 + 0.35 * d)
    male_ratio = (0.95 - 0.2 * d) + u[:, 2] * (1.12 - (0.95 - 0.2 * d))
    right = left * np.where(female, female_ratio, male_ratio)
    return np.stack([left, right], axis=1).astype(np.float32), _lerp(u[:, 3], 0.35, 0.5)


def _egg_frame(ctr: F32, theta: F32, u: F32, v: F32) -> F32:
    """Image (x, y) of egg-frame points (u along the long axis, v across it)."""
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([ctr[:, 0] + u * c - v * s, ctr[:, 1] + u * s + v * c], axis=1)


def anatomy(specs: Sequence[EggSpec], size: int = DEFAULT_SIZE) -> Anatomy:
    """Draw the geometry and contrast of each scan from its own seed."""
    u = np.stack([np.random.default_rng(s.seed).random(_N_UNIFORMS) for s in specs]).astype(
        np.float32
    )
    label = np.array([LABELS.index(s.label) for s in specs], dtype=np.int64)
    d = np.array([s.difficulty for s in specs], dtype=np.float32)
    a = _lerp(u[:, 4], 0.36, 0.43) * size
    b = a * _lerp(u[:, 5], 0.72, 0.8)
    slack = np.maximum(size / 2 - a * 1.04 - 3, 0)
    ctr = size / 2 + (u[:, 6:8] * 2 - 1) * slack[:, None]
    # Eggs lie roughly aligned in the tray, pointed end either way.
    theta = _lerp(u[:, 8], -0.5, 0.5) + np.pi * (u[:, 9] < 0.5)
    yolk_uv = (_lerp(u[:, 10], -0.15, 0.1) * a, _lerp(u[:, 11], -0.15, 0.15) * b)
    yolk = np.column_stack([*yolk_uv, _lerp(u[:, 12], 0.42, 0.5) * a, 0.62 * b])
    side = np.where(u[:, 13] < 0.5, -1.0, 1.0)  # embryo floats on top of the yolk
    emb_uv = (yolk_uv[0] + _lerp(u[:, 14], -0.1, 0.1) * a, yolk_uv[1] + side * 0.35 * b)
    ea, eb = _lerp(u[:, 15], 0.3, 0.36) * a, _lerp(u[:, 16], 0.19, 0.23) * a
    phi = theta + _lerp(u[:, 17], -0.6, 0.6) + np.pi * (u[:, 18] < 0.5)
    gonad_long, gonad_signal = _gonads(u[:, 19:23], label, a, d)
    gain = np.array([SCANNER_GAINS[int(s.scanner[-2:]) - 1] for s in specs], dtype=np.float32)
    return Anatomy(
        egg=np.column_stack([ctr, theta, a, b]).astype(np.float32),
        yolk=yolk.astype(np.float32),
        embryo=np.column_stack([_egg_frame(ctr, theta, *emb_uv), phi, ea, eb]).astype(np.float32),
        gonad_long=gonad_long,
        gonad_signal=gonad_signal,
        label=label,
        dead=u[:, 23] < 0.4,
        noise=(0.03 + 0.06 * d) * _lerp(u[:, 24], 0.8, 1.2),
        bias=((u[:, 25:30] * 2 - 1) * (0.15 + 0.35 * d)[:, None]).astype(np.float32),
        gain=gain * _lerp(u[:, 30], 0.7, 1.3),
    )


def _soft(r2: F32, min_axis: F32) -> F32:
    """Anti-aliased mask from the squared elliptic radius ``r2`` (in place)."""
    # (r2 - 1) / 2 * smaller axis approximates the signed distance near the edge,
    # which gives a one-pixel soft edge without a square root.
    r2 -= 1.0
    r2 *= -0.5 * min_axis.reshape(-1, 1, 1)
    r2 += 0.5
    return np.clip(r2, 0.0, 1.0, out=r2)


def _frame(xx: F32, yy: F32, cx: F32, cy: F32, ang: F32) -> tuple[F32, F32]:
    """Coordinates of every pixel in the frame centred on (cx, cy), rotated by ``ang``."""
    dx, dy = xx - cx.reshape(-1, 1, 1), yy - cy.reshape(-1, 1, 1)
    c, s = np.cos(ang).reshape(-1, 1, 1), np.sin(ang).reshape(-1, 1, 1)
    return dx * c + dy * s, dy * c - dx * s


Pair = tuple[NDArray[Any], NDArray[Any]]


def _in_frame(uv: Pair, centre: Pair, axes: Pair) -> F32:
    """Mask of axis-aligned ellipses at ``centre`` with semi-``axes``, in a frame ``uv``."""

    def col(x: F32) -> F32:
        return np.reshape(x, (-1, 1, 1))

    r2 = np.square((uv[0] - col(centre[0])) / col(axes[0]))
    r2 += np.square((uv[1] - col(centre[1])) / col(axes[1]))
    return _soft(r2, np.minimum(*axes))


def _paint(img: F32, mask: F32, value: F32 | float) -> None:
    """Blend ``value`` into ``img`` where ``mask`` is set (in place, no full-size temporaries)."""
    mask *= np.reshape(value, (-1, 1, 1)) - img
    img += mask


def _draw_egg(img: F32, an: Anatomy) -> None:
    """Shell, albumen, air cell and yolk on the full image, all in the egg's frame."""
    h, w = img.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy, theta, a, b = an.egg.T
    u, v = _frame(xx, yy, cx, cy, theta)
    # Eggs taper towards the pointed (+u) end.
    v_tapered = v / (1 - 0.12 * u / a.reshape(-1, 1, 1))
    zero = np.zeros_like(a)
    shell = np.maximum(0.018 * a, 1.2).astype(np.float32)
    _paint(img, _in_frame((u, v_tapered), (zero, zero), (a, b)), 0.05)
    inner = _in_frame((u, v_tapered), (zero, zero), (a - shell, b - shell))
    air = inner * _in_frame((u, v), (-a, zero), (0.2 * a, 0.65 * b))
    _paint(img, inner, 1.0)
    _paint(img, air, 0.03)
    yolk_u, yolk_v, yolk_a, yolk_b = an.yolk.T
    _paint(img, _in_frame((u, v), (yolk_u, yolk_v), (yolk_a, yolk_b)), 0.55)


def _draw_embryo(patch: F32, xx: F32, yy: F32, an: Anatomy) -> None:
    """Embryo, or its absence, in a window centred on the embryo site."""
    ex, ey, phi, ea, eb = an.embryo.T
    pq = _frame(xx, yy, ex, ey, phi)  # embryo frame: p along the body, q to its left
    dev = (an.label != 2).astype(np.float32).reshape(-1, 1, 1)
    dead = (an.dead & (an.label == 2)).astype(np.float32).reshape(-1, 1, 1)
    zero = np.zeros_like(ea)
    _paint(patch, dev * _in_frame(pq, (zero, zero), (ea, eb)), 0.42)
    _paint(patch, dev * _in_frame(pq, (0.85 * ea, zero), (0.42 * eb, 0.42 * eb)), 0.48)
    _paint(patch, dev * _in_frame(pq, (0.95 * ea, 0.12 * eb), (0.15 * eb, 0.15 * eb)), 0.12)
    for q in (0.72 * eb, -0.72 * eb):  # paired kidneys: symmetric in both sexes
        _paint(patch, dev * _in_frame(pq, (-0.1 * ea, q), (0.42 * ea, 0.13 * eb)), 0.62)
    for side, q in enumerate((_GONAD_Q * eb, -_GONAD_Q * eb)):
        long = np.maximum(an.gonad_long[:, side], 0.2)
        gonad = _in_frame(pq, (_GONAD_P * ea, q), (long, 0.5 * long))
        _paint(patch, dev * gonad, 0.42 + an.gonad_signal)
    _paint(patch, (1 - dev - dead) * _in_frame(pq, (zero, zero), (0.1 * eb, 0.1 * eb)), 0.9)
    _paint(patch, dead * _in_frame(pq, (zero, zero), (0.35 * eb, 0.22 * eb)), 0.4)
    ring = _in_frame(pq, (zero, zero), (ea, ea)) - _in_frame(pq, (zero, zero), (ea - 1.5, ea - 1.5))
    _paint(patch, dead * ring, 0.2)


def _embryo_window(img: F32, an: Anatomy) -> None:
    """Paint the embryo in a small window per scan instead of the whole image (speed)."""
    n, h, w = img.shape
    half = math.ceil(0.2 * max(h, w))
    x0 = np.clip(np.round(an.embryo[:, 0]).astype(np.int64) - half, 0, w - 2 * half)
    y0 = np.clip(np.round(an.embryo[:, 1]).astype(np.int64) - half, 0, h - 2 * half)
    span = np.arange(2 * half)
    rows = (y0[:, None] + span)[:, :, None]
    cols = (x0[:, None] + span)[:, None, :]
    idx = np.arange(n)[:, None, None]
    patch = img[idx, rows, cols]
    xx, yy = cols.astype(np.float32), rows.astype(np.float32)
    _draw_embryo(patch, xx, yy, an)
    img[idx, rows, cols] = patch


@cache
def _bias_basis(size: int) -> F32:
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j].astype(np.float32)
    return np.stack([x, y, x * x - 0.33, y * y - 0.33, x * y])


def _acquire(img: F32, an: Anatomy, specs: Sequence[EggSpec], clean: bool) -> NDArray[np.uint16]:
    """Bias field, Rician noise and scanner gain: the image as the scanner records it."""
    size = img.shape[1]
    if not clean:
        img *= np.exp(np.tensordot(an.bias, _bias_basis(size), axes=1))
        noise = np.empty((len(specs), 2, size, size), dtype=np.float32)
        for i, spec in enumerate(specs):
            # Noise from a per-scan stream keeps each scan independent of its batch.
            rng = np.random.Generator(np.random.SFC64([spec.seed, 1]))  # SFC64: fastest here
            rng.standard_normal(dtype=np.float32, out=noise[i])
        noise *= an.noise.reshape(-1, 1, 1, 1)
        noise[:, 0] += img
        np.hypot(noise[:, 0], noise[:, 1], out=img)
    counts = img * an.gain.reshape(-1, 1, 1)
    scans: NDArray[np.uint16] = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    return scans


def render_batch(
    specs: Sequence[EggSpec], size: int = DEFAULT_SIZE, clean: bool = False
) -> NDArray[np.uint16]:
    """(N, size, size) uint16 scans; ``clean`` leaves out noise and bias (for tests)."""
    if size < 32:
        raise ConfigError(f"scan size must be at least 32 pixels, got {size}")
    out = np.empty((len(specs), size, size), dtype=np.uint16)
    # Sub-batches keep the working arrays in cache; scans do not depend on the split.
    for start in range(0, len(specs), _SUB_BATCH):
        part = specs[start : start + _SUB_BATCH]
        an = anatomy(part, size)
        img = np.zeros((len(part), size, size), dtype=np.float32)
        _draw_egg(img, an)
        _embryo_window(img, an)
        out[start : start + len(part)] = _acquire(img, an, part, clean)
    return out


def render(spec: EggSpec, size: int = DEFAULT_SIZE, clean: bool = False) -> NDArray[np.uint16]:
    """One (size, size) uint16 scan."""
    scan: NDArray[np.uint16] = render_batch([spec], size, clean)[0]
    return scan


def generate(
    n: int,
    seed: int = 0,
    difficulty: float = DEFAULT_DIFFICULTY,
    mix: Sequence[float] = DEFAULT_MIX,
    *,
    size: int = DEFAULT_SIZE,
    chunk: int = 256,
) -> Iterator[tuple[list[EggSpec], NDArray[np.uint16]]]:
    """Yield ``(specs, scans)`` chunks of ``n`` reproducible scans in all."""
    for start in range(0, n, chunk):
        specs = make_specs(min(chunk, n - start), seed, difficulty, mix, start=start)
        yield specs, render_batch(specs, size)


__all__ = [
    "DEFAULT_DIFFICULTY",
    "DEFAULT_MIX",
    "LABELS",
    "Anatomy",
    "EggSpec",
    "anatomy",
    "generate",
    "make_specs",
    "render",
    "render_batch",
]
