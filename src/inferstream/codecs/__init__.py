"""Codecs: what the core knows of each content type it ingests, stores and shows.

A :class:`Codec` names a content type and knows how to *sniff* it from the first
bytes, *check* an upload (header sizes first, then a full decode, so a truncated
file or a decompression bomb is refused at ingest with the reason), *decode* it
to pixels and so *render* it as a PNG for people. PNG, JPEG, WebP, NumPy ``.npy``
and DICOM are built in; :func:`register_codec` adds more. An application may take the
place of a codec's check for its own contract (the scan contract of the bundled
application), but never skips it: see :func:`check`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from inferstream.codecs import dicom, npy, raster
from inferstream.codecs.limits import Checked, ImageLimits, UnsupportedContent, window

Pixels = np.ndarray
#: An application's own check of one content type: bytes in, a checked image out.
AppCheck = Callable[[bytes, ImageLimits], Checked]


@dataclass(frozen=True)
class Codec:
    """Everything the core does with one content type."""

    content_type: str
    sniff: Callable[[bytes], bool]
    check: Callable[[bytes, ImageLimits], Checked]
    decode: Callable[[bytes], Pixels]
    #: Rewrites the bytes before any check sees them (DICOM blanks its preamble).
    prepare: Callable[[bytes], bytes] = field(default=lambda data: data)


_CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> None:
    """Add (or replace) the codec of ``codec.content_type``; sniffed in the order added."""
    _CODECS[codec.content_type] = codec


def codec_for(content_type: str) -> Codec:
    try:
        return _CODECS[content_type]
    except KeyError:
        raise UnsupportedContent(
            f"content type {content_type!r} has no codec; known: {', '.join(_CODECS)}"
        ) from None


def content_types() -> tuple[str, ...]:
    return tuple(_CODECS)


def sniff(data: bytes) -> Codec:
    """The codec of an upload, told from its first bytes; :class:`UnsupportedContent`."""
    for codec in _CODECS.values():
        if codec.sniff(data):
            return codec
    raise UnsupportedContent(
        "file is none of the known kinds: DICOM (Part 10, 'DICM' at byte 128), PNG, JPEG, "
        "WebP or NumPy .npy"
    )


def check(
    data: bytes,
    limits: ImageLimits | None = None,
    overrides: Mapping[str, AppCheck] | None = None,
    accepted: tuple[str, ...] | None = None,
) -> Checked:
    """Sniff, prepare and check one upload; :class:`~inferstream.errors.InvalidInput` if bad.

    ``overrides`` holds an application's checks, which take the place of the codec's
    for their content types; ``accepted`` limits the content types taken at all.
    """
    codec = sniff(data)
    if accepted is not None and codec.content_type not in accepted:
        raise UnsupportedContent(
            f"this application does not take {codec.content_type}; send one of "
            f"{', '.join(accepted)}"
        )
    data = codec.prepare(data)
    own = (overrides or {}).get(codec.content_type)
    return (own or codec.check)(data, limits or ImageLimits())


def render_png(data: bytes, content_type: str) -> bytes:
    """A stored image as an 8-bit PNG for people (16-bit images windowed)."""
    pixels = codec_for(content_type).decode(data)
    if pixels.ndim == 3 and pixels.shape[2] not in (3, 4):
        pixels = pixels[..., 0]
    if pixels.dtype != np.uint8:
        pixels = window(pixels if pixels.ndim == 2 else pixels[..., 0])
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise UnsupportedContent(f"a {content_type} image could not be encoded as PNG")
    return bytes(encoded)


for _codec in (
    Codec(dicom.CONTENT_TYPE, dicom.sniff, dicom.check, dicom.decode, dicom.blank_preamble),
    Codec(raster.PNG, raster.is_png, raster.check_png, raster.decode),
    Codec(raster.JPEG, raster.is_jpeg, raster.check_jpeg, raster.decode),
    Codec(raster.WEBP, raster.is_webp, raster.check_webp, raster.decode),
    Codec(npy.CONTENT_TYPE, npy.sniff, npy.check, npy.decode),
):
    register_codec(_codec)

__all__ = [
    "AppCheck",
    "Checked",
    "Codec",
    "ImageLimits",
    "UnsupportedContent",
    "check",
    "codec_for",
    "content_types",
    "register_codec",
    "render_png",
    "sniff",
]
