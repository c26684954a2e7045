"""PNG, JPEG and WebP: sizes read from the header before decoding, then a full OpenCV
decode."""

from __future__ import annotations

import struct

import cv2
import numpy as np

from inferstream.codecs.limits import Checked, ImageLimits, check_dimensions
from inferstream.errors import InvalidInput

PNG, JPEG, WEBP = "image/png", "image/jpeg", "image/webp"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C4, C8 and CC are other segments).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def is_png(data: bytes) -> bool:
    return data.startswith(_PNG_MAGIC)


def is_jpeg(data: bytes) -> bool:
    return data.startswith(b"\xff\xd8\xff")


def is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidInput("PNG is truncated or corrupt: no IHDR header chunk")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def check_png_chunks(data: bytes) -> None:
    """Every chunk's length fits in the bytes that follow it, up to IEND.

    OpenCV's PNG reader allocates what a chunk's length claims before reading it: a
    131-byte file whose chunk claimed 460 MB took 2 GB to refuse (found by fuzzing)."""
    pos, index = len(_PNG_MAGIC), 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise InvalidInput(f"PNG is truncated or corrupt: chunk {index} at byte {pos} is cut")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if pos + 12 + length > len(data):
            raise InvalidInput(
                f"PNG is truncated or corrupt: chunk {index} ({data[pos + 4 : pos + 8]!r}) at "
                f"byte {pos} claims {length} bytes, but only {len(data) - pos - 12} follow; "
                "send the whole file"
            )
        if data[pos + 4 : pos + 8] == b"IEND":
            return
        pos, index = pos + 12 + length, index + 1
    raise InvalidInput("PNG is truncated or corrupt: it has no IEND chunk; send the whole file")


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


def webp_size(data: bytes) -> tuple[int, int]:
    """Width and height from the first chunk of a WebP file (lossy, lossless or extended)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # canvas size, 24 bits each, minus one
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # 14 bits each, minus one
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    raise InvalidInput("WebP is truncated or corrupt: no VP8, VP8L or VP8X header chunk")


def check_png(data: bytes, limits: ImageLimits) -> Checked:
    size = png_size(data)
    check_dimensions(*size, limits)  # a bomb is named as one, before its structure
    check_png_chunks(data)
    return _check(data, PNG, size, limits)


def check_jpeg(data: bytes, limits: ImageLimits) -> Checked:
    return _check(data, JPEG, jpeg_size(data), limits)


def check_webp(data: bytes, limits: ImageLimits) -> Checked:
    return _check(data, WEBP, webp_size(data), limits)


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
