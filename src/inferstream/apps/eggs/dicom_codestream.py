"""Cheap checks on compressed pixel data before a codec is allowed to allocate anything.

A codec sizes its output from the codestream's own header, not from the DICOM Rows and
Columns we validated, so a 30 KB file whose JPEG 2000 header claims 60000x60000 would
make OpenJPEG allocate gigabytes. Here we read the image size from the JPEG (SOFn),
JPEG-LS (SOF55) or JPEG 2000 (SIZ) header of the frame and insist it matches the
DICOM header; RLE has no such header, so its compressed size is bounded instead
(RLE expands at most 64x, so a small input stays a small output).
"""

from __future__ import annotations

import struct

JPEG_FAMILY = frozenset(
    (
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
    )
)
J2K_FAMILY = frozenset(
    (
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    )
)
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
# SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), plus JPEG-LS SOF55 (F7).
_SOF = frozenset({0xC0 + n for n in range(16)} - {0xC4, 0xC8, 0xCC} | {0xF7})
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
# Where the SOC+SIZ may start: 0 for a raw codestream, after the boxes of a JP2 file.
_J2K_SEARCH = 4096


class BadCodestream(Exception):
    """The compressed frame is unusable; the message says why."""


def check_frame(syntax: str, frame: bytes, rows: int, cols: int) -> None:
    """Raise BadCodestream unless ``frame`` can only decode to about rows x cols x 16 bits."""
    raw = rows * cols * 2
    # Legitimate streams of noise grow by a few percent at most (RLE: 1 byte per 128 and
    # per row); far more data than the raw image means the stream is not what it claims.
    limit = raw + raw // 8 + 4096 if syntax == RLE_LOSSLESS else 2 * raw + 65536
    if len(frame) > limit:
        raise BadCodestream(
            f"compressed frame is {len(frame)} bytes, more than a {rows}x{cols} 16-bit image "
            f"could need ({limit}); the pixel data is damaged or hostile"
        )
    if syntax in J2K_FAMILY:
        claimed = _j2k_size(frame)
    elif syntax in JPEG_FAMILY:
        claimed = _jpeg_size(frame)
    else:
        return
    if claimed != (rows, cols):
        raise BadCodestream(
            f"compressed frame claims {claimed[0]}x{claimed[1]} pixels but Rows x Columns is "
            f"{rows}x{cols}; refusing to decode a mismatched (possibly hostile) codestream"
        )


def _j2k_size(frame: bytes) -> tuple[int, int]:
    start = frame.find(_J2K_SOC_SIZ, 0, _J2K_SEARCH)
    if start < 0:
        raise BadCodestream("JPEG 2000 frame has no SOC and SIZ markers at its start")
    try:
        # SIZ: marker, Lsiz, Rsiz, then Xsiz, Ysiz, XOsiz, YOsiz (ISO 15444-1 A.5.1).
        width, height, x_origin, y_origin = struct.unpack_from(">IIII", frame, start + 8)
    except struct.error:
        raise BadCodestream("JPEG 2000 frame ends inside its SIZ header") from None
    return height - y_origin, width - x_origin


def _jpeg_size(frame: bytes) -> tuple[int, int]:
    if not frame.startswith(b"\xff\xd8"):
        raise BadCodestream("JPEG frame does not start with an SOI marker")
    pos = 2
    try:
        while True:
            marker, length = struct.unpack_from(">2sH", frame, pos)
            if marker[0] != 0xFF:
                raise BadCodestream(f"JPEG frame has no marker at byte {pos}")
            if marker[1] in _SOF:
                # SOF: length, precision (1 byte), then lines and samples per line.
                height, width = struct.unpack_from(">HH", frame, pos + 5)
                return height, width
            pos += 2 + length
    except struct.error:
        raise BadCodestream("JPEG frame ends before its SOF header") from None
