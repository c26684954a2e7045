"""Bounds on DICOM pixel data, checked before a decoder is allowed to allocate anything.

Two ways a few kilobytes of DICOM become gigabytes in memory, both closed here:

- a **deflated** data set is inflated whole by the reader before a single header value
  can be checked (DEFLATE expands about a thousandfold), so it is refused from the file
  meta group alone, before the data set is parsed: :func:`transfer_syntax`;
- a **compressed frame** is decoded at the size its codestream header claims, not at the
  Rows and Columns already checked, so a 1 KB file whose JPEG header claims 30000x30000
  makes the decoder allocate gigabytes (found by fuzzing). The image size is read from
  the JPEG (SOFn), JPEG-LS (SOF55) or JPEG 2000 (SIZ) header and must match the DICOM
  header; RLE has no such header, so its compressed size is bounded instead (RLE
  expands at most 64x, so a small input stays a small output): :func:`check_frame`.
"""

from __future__ import annotations

import io
import struct

from inferstream.errors import InvalidInput

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
#: Pixel data stored as it is (no codestream to check).
NATIVE = frozenset((IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE))
JPEG_FAMILY: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
}
J2K_FAMILY: dict[str, str] = {
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}
#: Every transfer syntax whose pixel data can be bounded before decoding, UID -> name.
#: Deflated data sets are left out on purpose (see the module's docstring).
TRANSFER_SYNTAXES: dict[str, str] = {
    IMPLICIT_VR_LE: "Implicit VR Little Endian",
    EXPLICIT_VR_LE: "Explicit VR Little Endian",
    EXPLICIT_VR_BE: "Explicit VR Big Endian",
    RLE_LOSSLESS: "RLE Lossless",
    **JPEG_FAMILY,
    **J2K_FAMILY,
}
# SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), plus JPEG-LS SOF55 (F7).
_SOF = frozenset({0xC0 + n for n in range(16)} - {0xC4, 0xC8, 0xCC} | {0xF7})
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
# Where the SOC+SIZ may start: 0 for a raw codestream, after the boxes of a JP2 file.
_J2K_SEARCH = 4096


class BadCodestream(InvalidInput):
    """The compressed frame is unusable or hostile; the message says why."""


def read_transfer_syntax(data: bytes) -> str:
    """The transfer syntax of a DICOM Part 10 file ("" if it names none), read from its
    file meta group only: nothing after it is parsed, so nothing is inflated."""
    from pydicom.filereader import read_dataset, read_preamble

    stream = io.BytesIO(data)
    try:
        read_preamble(stream, False)
        meta = read_dataset(stream, is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, *_: tag.group != 2)  # fmt: skip
        return str(meta.get("TransferSyntaxUID") or "")
    except Exception as exc:  # pydicom's parse errors are of many types
        raise InvalidInput(
            f"DICOM file meta group is unreadable: {exc!s:.200}; send a DICOM Part 10 file "
            "(preamble, 'DICM', then the file meta group), e.g. as dcmconv writes it"
        ) from exc


def transfer_syntax(data: bytes) -> str:
    """:func:`read_transfer_syntax`, refused (:class:`InvalidInput`) when missing or not
    one of :data:`TRANSFER_SYNTAXES`."""
    syntax = read_transfer_syntax(data)
    if not syntax:
        raise InvalidInput(
            "DICOM file meta group has no TransferSyntaxUID (0002,0010); export the file "
            "again as DICOM Part 10 (dcmconv adds one)"
        )
    if syntax not in TRANSFER_SYNTAXES:
        raise InvalidInput(
            f"unsupported transfer syntax {syntax!r:.80}; send one of: "
            f"{', '.join(TRANSFER_SYNTAXES.values())} (deflated data sets are refused: "
            "inflating one is a decompression bomb nothing can bound beforehand)"
        )
    return syntax


def check_frame(
    syntax: str, frame: bytes, rows: int, cols: int, *, samples: int = 1, sample_bytes: int = 2
) -> None:
    """Raise :class:`BadCodestream` unless ``frame`` can only decode to about rows x cols
    pixels of ``samples`` samples (components) of ``sample_bytes`` bytes each."""
    bytes_per_pixel = samples * sample_bytes
    raw = rows * cols * bytes_per_pixel
    # Legitimate streams of noise grow by a few percent at most (RLE: 1 byte per 128 and
    # per row); far more data than the raw image means the stream is not what it claims.
    limit = raw + raw // 8 + 4096 if syntax == RLE_LOSSLESS else 2 * raw + 65536
    if len(frame) > limit:
        raise BadCodestream(
            f"compressed frame is {len(frame)} bytes, more than a {rows}x{cols} image of "
            f"{bytes_per_pixel} bytes per pixel could need ({limit}); the pixel data is "
            "damaged or hostile"
        )
    if syntax in J2K_FAMILY:
        claimed = _j2k_size(frame)
    elif syntax in JPEG_FAMILY:
        claimed = _jpeg_size(frame)
    else:
        return
    if claimed[:2] != (rows, cols):
        raise BadCodestream(
            f"compressed frame claims {claimed[0]}x{claimed[1]} pixels but Rows x Columns is "
            f"{rows}x{cols}; refusing to decode a mismatched (possibly hostile) codestream; "
            "export the image again, or send it uncompressed"
        )
    if claimed[2] != samples:
        raise BadCodestream(
            f"compressed frame claims {claimed[2]} components but SamplesPerPixel is "
            f"{samples}; refusing to decode a mismatched (possibly hostile) codestream"
        )


def first_frame(pixel_data: bytes) -> bytes:
    """The first frame of encapsulated pixel data; :class:`BadCodestream` if damaged."""
    from pydicom.encaps import generate_frames

    try:
        return next(generate_frames(pixel_data, number_of_frames=1))
    except Exception as exc:  # pydicom raises several types on damaged items
        raise BadCodestream(f"encapsulated pixel data is damaged: {exc!s:.200}") from exc


def _j2k_size(frame: bytes) -> tuple[int, int, int]:
    start = frame.find(_J2K_SOC_SIZ, 0, _J2K_SEARCH)
    if start < 0:
        raise BadCodestream("JPEG 2000 frame has no SOC and SIZ markers at its start")
    try:
        # SIZ: marker, Lsiz, Rsiz, then Xsiz, Ysiz, XOsiz, YOsiz (ISO 15444-1 A.5.1).
        # The tile sizes and offsets (16 bytes) lie between them and Csiz, the components.
        width, height, x_origin, y_origin = struct.unpack_from(">IIII", frame, start + 8)
        (components,) = struct.unpack_from(">H", frame, start + 40)
    except struct.error:
        raise BadCodestream("JPEG 2000 frame ends inside its SIZ header") from None
    return height - y_origin, width - x_origin, components


def _jpeg_size(frame: bytes) -> tuple[int, int, int]:
    if not frame.startswith(b"\xff\xd8"):
        raise BadCodestream("JPEG frame does not start with an SOI marker")
    pos = 2
    try:
        while True:
            marker, length = struct.unpack_from(">2sH", frame, pos)
            if marker[0] != 0xFF:
                raise BadCodestream(f"JPEG frame has no marker at byte {pos}")
            if marker[1] in _SOF:
                # SOF: length, precision (1 byte), lines, samples per line, components.
                height, width, components = struct.unpack_from(">HHB", frame, pos + 5)
                return height, width, components
            pos += 2 + length
    except struct.error:
        raise BadCodestream("JPEG frame ends before its SOF header") from None
