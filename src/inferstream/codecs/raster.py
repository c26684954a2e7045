"""PNG and JPEG: sizes read from the header before decoding, then a full OpenCV decode."""

from __future__ import annotations

import struct

import cv2
import numpy as np

from inferstream.codecs.limits import Checked, ImageLimits, check_dimensions
from inferstream.errors import InvalidInput

PNG, JPEG = "image/png", "image/jpeg"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C4, C8 and CC are other segments).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def is_png(data: bytes) -> bool:
    return data.startswith(_PNG_MAGIC)


def is_jpeg(data: bytes) -> bool:
    return data.startswith(b"\xff\xd8\xff")


def png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidInput("PNG is truncated or corrupt: no IHDR header chunk")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from the JPEG's start-of-frame segment, without decoding."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + length
    raise InvalidInput("JPEG is truncated or corrupt: no start-of-frame segment found")


def check_png(data: bytes, limits: ImageLimits) -> Checked:
    return _check(data, PNG, png_size(data), limits)


def check_jpeg(data: bytes, limits: ImageLimits) -> Checked:
    return _check(data, JPEG, jpeg_size(data), limits)


def _check(data: bytes, kind: str, size: tuple[int, int], limits: ImageLimits) -> Checked:
    width, height = size
    check_dimensions(width, height, limits)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.shape[:2] != (height, width):
        raise InvalidInput(f"{kind} image is truncated or corrupt; OpenCV could not decode it")
    return Checked(data, kind, {"width": str(width), "height": str(height)})


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InvalidInput("the stored image could not be decoded by OpenCV")
    return np.asarray(image)
