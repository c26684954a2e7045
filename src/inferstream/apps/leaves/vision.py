"""What serving and training share: model inputs from photos and crops, boxes from the
detector's heatmap, and box matching for precision and recall. No PyTorch here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
CROP = 32
#: A component smaller than this (pixels) is noise, not a leaf.
MIN_AREA = 40
IOU_MATCH = 0.5


def photo_tensor(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    """(H, W, 3) RGB uint8 -> (3, H, W) float32 in [0, 1]: the detector's input."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0


def crop_image(image: NDArray[np.uint8], box: Box) -> NDArray[np.uint8]:
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1]


def crop_tensor(crop: NDArray[np.uint8]) -> NDArray[np.float32]:
    """A leaf crop -> (3, CROP, CROP) float32 in [0, 1]: every grader's input."""
    resized: NDArray[np.uint8] = np.asarray(
        cv2.resize(crop, (CROP, CROP), interpolation=cv2.INTER_NEAREST), dtype=np.uint8
    )
    return photo_tensor(resized)


def boxes_from_heatmap(logits: NDArray[np.float32]) -> list[Box]:
    """Leaf boxes from a (H, W) logit map: connected components of ``logit > 0``,
    in reading order (top to bottom, then left to right) so crop indices are stable."""
    mask = (logits > 0).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    boxes = [
        (int(x), int(y), int(x + w), int(y + h))
        for x, y, w, h, area in stats[1:count]
        if area >= MIN_AREA
    ]
    return sorted(boxes, key=lambda b: (b[1] // 20, b[0]))


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def match(found: Sequence[Box], truth: Sequence[Box]) -> dict[int, int]:
    """Greedy one-to-one matching by IoU >= :data:`IOU_MATCH`: found index -> truth index."""
    pairs = sorted(
        ((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)),
        reverse=True,
    )
    matched: dict[int, int] = {}
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < IOU_MATCH:
            break
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    return matched


@dataclass
class BoxScore:
    """Counts for precision and recall of boxes against the truth."""

    found: int = 0
    truth: int = 0
    matched: int = 0

    def add(self, found: Sequence[Box], truth: Sequence[Box]) -> dict[int, int]:
        pairs = match(found, truth)
        self.found += len(found)
        self.truth += len(truth)
        self.matched += len(pairs)
        return pairs

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.truth if self.truth else 1.0
