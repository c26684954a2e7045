"""A small DICOM reader for the common case, about 30x cheaper than a full pydicom parse.

It handles exactly what edge scanners send most of the time: a Part 10 file (preamble,
``DICM``, file meta group) with Explicit or Implicit VR Little Endian and native
(uncompressed) pixel data. It walks the elements once, decodes only the tags the egg
pipeline needs, skips everything else by its length, and returns the pixel data as an
offset into the input (the caller views it with ``np.frombuffer``, no copy).

Anything else - compressed or big-endian transfer syntaxes, undefined lengths, a tag
with an unexpected VR or size - raises :class:`NotFast` and the caller falls back to
pydicom. Damage that no reader could get past (no ``DICM`` marker, an element running
past the end of the bytes) raises :class:`Damaged` with the byte offset and tag, since
pydicom would only fail later with a vaguer message.
The preamble is never interpreted: it may hold anything, an executable included.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"

PREAMBLE = 128
PIXEL_DATA = 0x7FE00010
_META_GROUP_LE = b"\x02\x00"
_UNDEFINED = 0xFFFFFFFF
# Explicit VRs whose length is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_ALL_VRS = _LONG_VRS | {
    *(b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT"),
    *(b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"),
}
_TEXT_VRS = frozenset((b"AE", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"SH", b"TM", b"UI"))

#: Tags the pipeline reads: tag -> (keyword, kind). kind "US" is one unsigned short,
#: "text" a string, "uid" a UID string. pydicom's keywords, so both readers fill the
#: same header.
META_WANTED: dict[int, tuple[str, str]] = {
    0x00020003: ("MediaStorageSOPInstanceUID", "uid"),
    0x00020010: ("TransferSyntaxUID", "uid"),
}
DATA_WANTED: dict[int, tuple[str, str]] = {
    0x00080016: ("SOPClassUID", "uid"),
    0x00080018: ("SOPInstanceUID", "uid"),
    0x0008002A: ("AcquisitionDateTime", "text"),
    0x00080201: ("TimezoneOffsetFromUTC", "text"),
    0x00080050: ("AccessionNumber", "text"),
    0x00080060: ("Modality", "text"),
    0x00081010: ("StationName", "text"),
    0x00100020: ("PatientID", "text"),
    0x00120050: ("ClinicalTrialTimePointID", "text"),
    0x0020000D: ("StudyInstanceUID", "uid"),
    0x0020000E: ("SeriesInstanceUID", "uid"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "text"),
    0x00280008: ("NumberOfFrames", "text"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280102: ("HighBit", "US"),
    0x00280103: ("PixelRepresentation", "US"),
}

Header = dict[str, str | int]

_EXPLICIT_HEAD = struct.Struct("<HH2sH")
_IMPLICIT_HEAD = struct.Struct("<HHI")
_U32 = struct.Struct("<I")


class NotFast(Exception):
    """The file is outside what the fast reader handles; read it with pydicom instead."""


class Damaged(Exception):
    """No reader could get past this damage; the message says where it is."""


@dataclass(frozen=True)
class FastRead:
    """The wanted header values and where the native pixel data lies in the input."""

    header: Header
    pixel_offset: int
    pixel_length: int


def read(data: bytes, wanted: Mapping[int, tuple[str, str]] = DATA_WANTED) -> FastRead:
    """Read the header and locate the pixel data, or raise NotFast / Damaged."""
    if len(data) < PREAMBLE + 4:
        raise Damaged(f"not DICOM: {len(data)} bytes is shorter than the 132-byte Part 10 header")
    if data[PREAMBLE : PREAMBLE + 4] != b"DICM":
        raise Damaged("not DICOM: no 'DICM' marker at byte 128; send a DICOM Part 10 file")
    header: Header = {}
    pos, _ = _walk(data, PREAMBLE + 4, header, explicit=True, wanted=META_WANTED)
    syntax = header.get("TransferSyntaxUID")
    if syntax not in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
        raise NotFast(f"transfer syntax {syntax!r}")
    explicit = syntax == EXPLICIT_VR_LE
    _, pixels = _walk(data, pos, header, explicit=explicit, wanted=wanted)
    if pixels is None:
        return FastRead(header, -1, 0)
    return FastRead(header, pixels[0], pixels[1])


def _walk(
    data: bytes, pos: int, header: Header, *, explicit: bool, wanted: Mapping[int, tuple[str, str]]
) -> tuple[int, tuple[int, int] | None]:
    """Walk top-level elements from ``pos``, keeping the ``wanted`` ones; return where it
    stopped and the pixel span. Reading the file meta group (``META_WANTED``), it stops
    at the first element outside group 0002.
    """
    end = len(data)
    meta_only = wanted is META_WANTED
    element = _explicit_element if explicit else _implicit_element
    pixels: tuple[int, int] | None = None
    while pos < end:
        if meta_only and data[pos : pos + 2] != _META_GROUP_LE:
            return pos, None  # the data set begins, in its own transfer syntax
        tag, vr, start, length = element(data, pos)
        if start + length > end:
            if length == _UNDEFINED:
                raise NotFast(f"undefined length at tag {_tag_name(tag)}")
            raise Damaged(
                f"truncated: tag {_tag_name(tag)} at byte {pos} declares {length} bytes "
                f"but only {end - start} remain; the file was cut short, send it again"
            )
        if tag in wanted:
            keyword, kind = wanted[tag]
            header[keyword] = _value(data[start : start + length], kind, vr, keyword)
        elif tag == PIXEL_DATA:
            pixels = (start, length)
        pos = start + length
    return pos, pixels


def _explicit_element(data: bytes, pos: int) -> tuple[int, bytes | None, int, int]:
    """(tag, VR, value offset, value length) of the Explicit VR element at ``pos``."""
    try:
        group, elem, vr, length = _EXPLICIT_HEAD.unpack_from(data, pos)
        if vr in _LONG_VRS:
            return group << 16 | elem, vr, pos + 12, _U32.unpack_from(data, pos + 8)[0]
    except struct.error:
        raise _cut_in_header(data, pos) from None
    if vr not in _ALL_VRS:
        raise NotFast(f"unknown VR {vr!r} at byte {pos}")
    return group << 16 | elem, vr, pos + 8, length


def _implicit_element(data: bytes, pos: int) -> tuple[int, bytes | None, int, int]:
    """(tag, None, value offset, value length) of the Implicit VR element at ``pos``."""
    try:
        group, elem, length = _IMPLICIT_HEAD.unpack_from(data, pos)
    except struct.error:
        raise _cut_in_header(data, pos) from None
    return group << 16 | elem, None, pos + 8, length


def _cut_in_header(data: bytes, pos: int) -> Damaged:
    return Damaged(
        f"truncated: element header at byte {pos} runs past the end of the "
        f"{len(data)} bytes; the file was cut short, send it again"
    )


def _value(raw: bytes, kind: str, vr: bytes | None, keyword: str) -> str | int:
    if kind == "US":
        if len(raw) != 2 or (vr is not None and vr != b"US"):
            raise NotFast(f"{keyword} has VR {vr!r} and {len(raw)} bytes")
        return raw[0] | raw[1] << 8
    if vr is not None and vr not in _TEXT_VRS:
        raise NotFast(f"{keyword} has VR {vr!r}")
    # pydicom's default character set for text without (0008,0005) is ISO 8859-1.
    text = raw.decode("latin-1").rstrip("\x00 ")
    # pydicom's UID type also strips whitespace at both ends; strip alike to agree.
    return text.strip() if kind == "uid" else text


def _tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
