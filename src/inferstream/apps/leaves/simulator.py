"""A drone over a field trial, deterministic from a seed: photos of leaves and their truth.

Fixed GPS positions lie in a ``control`` and a ``treated`` area. Each position is
photographed once a day; a photo shows up to :data:`MAX_LEAVES` leaves (green ellipses
on soil, one per cell of a 5 x 4 grid, so leaves never touch). Each leaf carries, for
each of the five diseases, a severity grade 0-4 drawn as that many spots of the
disease's colour (:data:`SPOTS`); from day to day a grade grows or heals, and treated
leaves heal faster. The truth (every leaf's box and grades) comes with each photo, so
the detector, the graders and the whole pipeline are checked against it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import cv2
import numpy as np
from numpy.typing import NDArray

#: The five diseases, one grader each; also the order of the joined record's grades.
DISEASES: tuple[str, ...] = ("rust", "mildew", "spot", "blight", "scab")
#: Spot colour (RGB) of each disease.
COLOURS: dict[str, tuple[int, int, int]] = {
    "rust": (230, 120, 20),
    "mildew": (235, 235, 235),
    "spot": (60, 30, 10),
    "blight": (140, 50, 160),
    "scab": (170, 170, 40),
}
GRADES = 5
#: Spots drawn for a grade (0 = healthy).
SPOTS = (0, 2, 4, 7, 10)
AREAS = ("control", "treated")
HEIGHT, WIDTH = 160, 200
ROWS, COLS = 4, 5
CELL = 40
MAX_LEAVES = ROWS * COLS
#: Per day: probability a grade grows by one, and that it heals by one, per area.
DRIFT = {"control": (0.35, 0.10), "treated": (0.10, 0.45)}
START = date(2026, 6, 1)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


@dataclass(frozen=True)
class Leaf:
    idx: int
    box: Box
    grades: dict[str, int]


@dataclass(frozen=True)
class Photo:
    tenant: str
    position_id: str
    area: str
    date: str
    image: NDArray[np.uint8]  # (HEIGHT, WIDTH, 3) RGB
    leaves: tuple[Leaf, ...]
    mask: NDArray[np.bool_]  # (HEIGHT, WIDTH): leaf pixels

    @property
    def blob_path(self) -> str:
        """Where the photo lands in the blob store (the tenant prefix comes first)."""
        return f"{self.tenant}/{self.position_id}/{self.date}/image.png"


@dataclass(frozen=True)
class _Plant:
    """A leaf's fixed place and shape at one position (only its spots change)."""

    cell: int
    centre: tuple[int, int]
    axes: tuple[int, int]
    angle: float


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def positions(n: int) -> list[tuple[str, str]]:
    """``n`` positions (id, area), alternating control and treated."""
    return [(f"P{i:03d}", AREAS[i % 2]) for i in range(n)]


def _plants(seed: int, position_id: str, n_leaves: int) -> list[_Plant]:
    rng = _rng(seed, position_id, "plants")
    cells = sorted(rng.choice(MAX_LEAVES, size=n_leaves, replace=False).tolist())
    plants = []
    for cell in cells:
        row, col = divmod(cell, COLS)
        cx = col * CELL + CELL // 2 + int(rng.integers(-3, 4))
        cy = row * CELL + CELL // 2 + int(rng.integers(-3, 4))
        axes = (int(rng.integers(11, 16)), int(rng.integers(7, 12)))
        plants.append(_Plant(cell, (cx, cy), axes, float(rng.uniform(0, 180))))
    return plants


def _grade_paths(
    seed: int, position_id: str, area: str, n_leaves: int, days: int
) -> NDArray[np.int64]:
    """Grades (days, leaves, diseases): a start grade, then a daily drift by area."""
    rng = _rng(seed, position_id, "grades")
    grades = np.zeros((days, n_leaves, len(DISEASES)), dtype=np.int64)
    grades[0] = rng.choice(GRADES, size=(n_leaves, len(DISEASES)), p=(0.3, 0.25, 0.2, 0.15, 0.1))
    grow, heal = DRIFT[area]
    for day in range(1, days):
        step = rng.random((n_leaves, len(DISEASES)))
        change = np.where(step < grow, 1, np.where(step > 1 - heal, -1, 0))
        grades[day] = np.clip(grades[day - 1] + change, 0, GRADES - 1)
    return grades


def _draw(
    plants: list[_Plant], grades: NDArray[np.int64], rng: np.random.Generator
) -> tuple[NDArray[np.uint8], list[Box], NDArray[np.bool_]]:
    leaf_pixels = np.zeros((HEIGHT, WIDTH), bool)
    soil = rng.normal((110, 80, 50), 12, size=(HEIGHT, WIDTH, 3))
    image = np.clip(soil, 0, 255).astype(np.uint8)
    boxes = []
    for plant, leaf_grades in zip(plants, grades, strict=True):
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.ellipse(mask, plant.centre, plant.axes, plant.angle, 0, 360, 1, -1)
        green = rng.normal((45, 140, 45), 10, size=(HEIGHT, WIDTH, 3))
        image[mask > 0] = np.clip(green[mask > 0], 0, 255).astype(np.uint8)
        leaf_pixels |= mask > 0
        ys, xs = np.nonzero(mask)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        inner = np.zeros_like(mask)
        small = (max(plant.axes[0] - 3, 1), max(plant.axes[1] - 3, 1))
        cv2.ellipse(inner, plant.centre, small, plant.angle, 0, 360, 1, -1)
        iy, ix = np.nonzero(inner)
        for disease, grade in zip(DISEASES, leaf_grades, strict=True):
            for k in rng.choice(len(ix), size=SPOTS[int(grade)], replace=True):
                cv2.circle(image, (int(ix[k]), int(iy[k])), 1, COLOURS[disease], -1)
    return image, boxes, leaf_pixels


def day_name(day: int) -> str:
    return (START + timedelta(days=day)).isoformat()


def simulate(
    n_positions: int = 4, days: int = 3, seed: int = 0, tenant: str = "demo-farm"
) -> Iterator[Photo]:
    """Every photo, position by position and day by day, with its truth."""
    for position_id, area in positions(n_positions):
        n_leaves = int(_rng(seed, position_id, "count").integers(8, MAX_LEAVES + 1))
        plants = _plants(seed, position_id, n_leaves)
        paths = _grade_paths(seed, position_id, area, n_leaves, days)
        for day in range(days):
            image, boxes, mask = _draw(plants, paths[day], _rng(seed, position_id, day, "draw"))
            leaves = tuple(
                Leaf(i, box, dict(zip(DISEASES, map(int, paths[day][i]), strict=True)))
                for i, box in enumerate(boxes)
            )
            yield Photo(tenant, position_id, area, day_name(day), image, leaves, mask)


def leaf_mask(photo: Photo) -> NDArray[np.float32]:
    """The detector's training target: 1 on leaf pixels, 0 on soil."""
    return photo.mask.astype(np.float32)


def encode_png(image: NDArray[np.uint8]) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise ValueError("PNG encoding failed")
    return bytes(encoded)


def decode_png(data: bytes) -> NDArray[np.uint8]:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a PNG image")
    rgb: NDArray[np.uint8] = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
    return rgb


__all__ = [
    "AREAS", "DISEASES", "GRADES", "Leaf", "Photo", "day_name", "decode_png",
    "encode_png", "leaf_mask", "positions", "simulate",
]  # fmt: skip
