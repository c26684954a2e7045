"""What every codec shares: the checked upload, the size limits, and the errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inferstream.errors import InvalidInput


class UnsupportedContent(InvalidInput):
    """The bytes are of no kind the core or the application takes (HTTP 415)."""


@dataclass(frozen=True)
class ImageLimits:
    """Largest image accepted, checked from the header before anything is decoded."""

    max_side: int = 4096
    max_pixels: int = 50_000_000


@dataclass(frozen=True)
class Checked:
    """An accepted upload: its bytes (as forwarded), type and the attributes found in it.

    ``key`` is the partition key the content itself suggests (its subject), or "".
    """

    data: bytes
    content_type: str
    attributes: dict[str, str] = field(default_factory=dict)
    key: str = ""


def check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    if width < 1 or height < 1:
        raise InvalidInput(f"image declares {width}x{height} pixels; it is corrupt")
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise InvalidInput(
            f"image declares {width}x{height} pixels, over the limit of "
            f"{limits.max_side} per side and {limits.max_pixels} in all "
            "(a decompression bomb, or an image that needs resizing before upload)"
        )


def window(pixels: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Map the [low, high] percentile range to 0..255, so the subject fills the grey scale."""
    values = pixels.astype(np.float32)
    low, high = np.percentile(values, [low_pct, high_pct])
    span = max(float(high - low), 1e-6)
    scaled = np.clip((values - low) / span, 0.0, 1.0) * 255.0
    result: np.ndarray = np.round(scaled).astype(np.uint8)
    return result
