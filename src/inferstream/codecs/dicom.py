"""DICOM Part 10 files of any modality, through pydicom (the pylibjpeg plugins decode
compressed pixel data).

Generic: one frame of greyscale or colour pixels within the size limits, read from
the header before the pixels are decoded. What an application demands beyond that
(the modality, identifiers, an acquisition contract) is the application's check,
which takes this one's place for its uploads (see :func:`inferstream.codecs.check`).
The 128-byte preamble, free space where a DICOM/PE polyglot keeps an executable
header, is zeroed before anything is checked or kept. Deflated data sets and compressed
frames whose codestream claims another size are refused before anything is decoded
(:mod:`inferstream.codecs.dicom_frames`).
"""

from __future__ import annotations

import io
import threading
import warnings
from typing import Any

import numpy as np

from inferstream.codecs.dicom_frames import NATIVE, check_frame, first_frame, transfer_syntax
from inferstream.codecs.limits import Checked, ImageLimits, check_dimensions
from inferstream.errors import InvalidInput

CONTENT_TYPE = "application/dicom"
#: pydicom's warning filters are process-global: threads take turns changing them.
_WARNINGS = threading.Lock()


def sniff(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def blank_preamble(data: bytes) -> bytes:
    return bytes(128) + data[128:] if sniff(data) else data


def check(data: bytes, limits: ImageLimits) -> Checked:
    syntax = transfer_syntax(data)  # before the data set is parsed: no inflating
    dataset = _read(data)  # parsed once: the header checked, then the pixels decoded
    rows, cols = _count(dataset, "Rows", None), _count(dataset, "Columns", None)
    check_dimensions(cols, rows, limits)
    frames = _count(dataset, "NumberOfFrames", 1)
    if frames != 1:
        raise InvalidInput(f"DICOM holds {frames} frames; send one image per file")
    pixels = _pixels(dataset, syntax)
    if pixels.shape[:2] != (rows, cols):
        raise InvalidInput(
            f"DICOM pixel data decoded to {pixels.shape}, the header says {rows}x{cols}"
        )
    modality = str(_value(dataset, "Modality") or "")
    return Checked(data, CONTENT_TYPE, {"width": str(cols), "height": str(rows),
                                        "modality": modality})  # fmt: skip


def decode(data: bytes) -> np.ndarray:
    syntax = transfer_syntax(data)  # before the data set is parsed: no inflating
    return _pixels(_read(data), syntax)


def _pixels(dataset: Any, syntax: str) -> np.ndarray:
    """The decoded pixels, a compressed frame first held to the header's size."""
    if "PixelData" not in dataset:
        raise InvalidInput("DICOM holds no pixel data; send an image")
    if syntax not in NATIVE:
        _check_compressed(dataset, syntax)
    try:
        with _WARNINGS, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(dataset.pixel_array)
    except Exception as exc:  # pydicom and its plugins raise many types on damage
        raise InvalidInput(f"DICOM pixel data is unreadable: {exc!s:.300}") from exc


def _check_compressed(dataset: Any, syntax: str) -> None:
    """The first frame's codestream must claim the header's size (the decoder trusts it)."""
    samples = _count(dataset, "SamplesPerPixel", 1)
    bits = _count(dataset, "BitsAllocated", None)
    pixel_data = _value(dataset, "PixelData")
    if not isinstance(pixel_data, bytes):
        raise InvalidInput("DICOM pixel data is not a byte string; the file is damaged")
    frame = first_frame(pixel_data)
    check_frame(syntax, frame, _count(dataset, "Rows", None), _count(dataset, "Columns", None),
                samples=samples, sample_bytes=max(1, -(-bits // 8)))  # fmt: skip


def _value(dataset: Any, keyword: str) -> Any:
    """An element's value; pydicom parses values when asked, so damage shows here."""
    try:
        return dataset.get(keyword)
    except Exception as exc:  # found by fuzzing: any of pydicom's parse errors
        raise InvalidInput(f"DICOM {keyword} is unreadable: {exc!s:.200}") from exc


def _count(dataset: Any, keyword: str, default: int | None) -> int:
    """A whole number the header must hold (``default`` where it may be absent)."""
    value = _value(dataset, keyword)
    if value is None or value == "":
        if default is None:
            raise InvalidInput(f"DICOM {keyword} is missing or empty; it must give the image size")
        return default
    try:
        count = int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"DICOM {keyword} is {value!r:.40}, not a whole number") from exc
    if count < 0:
        raise InvalidInput(f"DICOM {keyword} is {count}, below 0")
    return count


def _read(data: bytes) -> Any:
    """The parsed data set; its pixel data is bytes until :func:`_pixels` decodes it."""
    import pydicom

    try:
        with _WARNINGS, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # a zoo of exception types, all meaning "unusable"
        raise InvalidInput(f"DICOM is unreadable ({type(exc).__name__}): {exc!s:.300}") from exc
