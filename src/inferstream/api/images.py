"""Checking uploaded scans before they are accepted: DICOM, PNG, JPEG and NumPy ``.npy``.

Each check reads the declared size from the header first and refuses images over
the limits before anything is decoded (a 100-byte PNG can claim 100000x100000
pixels), then decodes fully so a truncated or corrupt file is refused now, with
the reason, rather than dead-lettered later.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

import cv2
import numpy as np

from inferstream.api.errors import BadRequest, UnsupportedMediaType
from inferstream.eggs.dicom import InvalidScan, decode

DICOM, PNG, JPEG, NPY = "application/dicom", "image/png", "image/jpeg", "application/x-npy"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
# JPEG start-of-frame markers (C4, C8 and CC are other segments).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class ImageLimits:
    max_side: int = 4096
    max_pixels: int = 50_000_000


@dataclass(frozen=True)
class CheckedScan:
    """An accepted upload: its bytes (as forwarded), type and the attributes found in it."""

    data: bytes
    content_type: str
    attributes: dict[str, str] = field(default_factory=dict)
    key: str = ""


def sniff(data: bytes) -> str:
    """The type of an upload from its first bytes; 415 for anything else."""
    if data[128:132] == b"DICM":
        return DICOM
    if data.startswith(_PNG_MAGIC):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(_NPY_MAGIC):
        return NPY
    raise UnsupportedMediaType(
        "file is not DICOM (Part 10, 'DICM' at byte 128), PNG, JPEG or NumPy .npy"
    )


def check_scan(data: bytes, limits: ImageLimits) -> CheckedScan:
    kind = sniff(data)
    if kind == DICOM:
        return check_dicom(data)
    if kind == NPY:
        return CheckedScan(data, NPY, _npy_attributes(data, limits))
    width, height = png_size(data) if kind == PNG else jpeg_size(data)
    _check_dimensions(width, height, limits)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.shape[:2] != (height, width):
        raise BadRequest(f"{kind} image is truncated or corrupt; OpenCV could not decode it")
    return CheckedScan(data, kind, {"width": str(width), "height": str(height)})


def check_dicom(data: bytes) -> CheckedScan:
    """Validate a DICOM scan the way the pipeline will; blank its 128-byte preamble.

    The preamble is free space that can hold e.g. a Windows executable header (a
    DICOM/PE polyglot); readers ignore it, and so that nothing downstream ever keeps
    such a file, the bytes forwarded have it zeroed.
    """
    try:
        scan = decode(data)
    except InvalidScan as exc:
        raise BadRequest(f"DICOM scan rejected: {exc}") from exc
    if data[128:132] == b"DICM":
        data = bytes(128) + data[128:]
    return CheckedScan(data, DICOM, scan.attributes(), key=scan.egg_id)


def png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise BadRequest("PNG is truncated or corrupt: no IHDR header chunk")
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
    raise BadRequest("JPEG is truncated or corrupt: no start-of-frame segment found")


def _check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    if width < 1 or height < 1:
        raise BadRequest(f"image declares {width}x{height} pixels; it is corrupt")
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise BadRequest(
            f"image declares {width}x{height} pixels, over the limit of "
            f"{limits.max_side} per side and {limits.max_pixels} in all "
            "(a decompression bomb, or a scan that needs resizing before upload)"
        )


def _npy_attributes(data: bytes, limits: ImageLimits) -> dict[str, str]:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        reader = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = reader(stream)
    except (ValueError, SyntaxError, struct.error) as exc:
        raise BadRequest(f".npy header is corrupt: {exc}") from exc
    if dtype.hasobject or dtype.kind not in "uif" or len(shape) not in (2, 3):
        raise BadRequest(
            f".npy holds {dtype} with shape {shape}; send a 2-D (or 2-D x channels) "
            "numeric image, never objects"
        )
    _check_dimensions(int(shape[1]), int(shape[0]), limits)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadRequest(f".npy is truncated or corrupt: {exc}") from exc
    return {"width": str(array.shape[1]), "height": str(array.shape[0]), "dtype": str(dtype)}
