"""WebP as a core content type: sized from its header (lossy, lossless, extended)
before any decoding, then checked by a full decode, like PNG and JPEG."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from inferstream import codecs
from inferstream.codecs import ImageLimits, raster
from inferstream.errors import InvalidInput


def webp(width: int, height: int, lossless: bool = False) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    quality = 101 if lossless else 80
    ok, data = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])
    assert ok
    return bytes(data)


@pytest.mark.parametrize("lossless", [False, True])
def test_webp_is_sniffed_sized_and_checked(lossless: bool) -> None:
    data = webp(333, 517, lossless)
    assert data[12:16] == (b"VP8L" if lossless else b"VP8 ")
    checked = codecs.check(data)
    assert checked.content_type == "image/webp"
    assert checked.attributes == {"width": "333", "height": "517"}
    assert codecs.render_png(data, "image/webp").startswith(b"\x89PNG")


def test_the_extended_header_gives_the_canvas_size() -> None:
    chunk = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4
    canvas = (4095).to_bytes(3, "little") + (2999).to_bytes(3, "little")
    data = b"RIFF" + struct.pack("<I", 30) + b"WEBP" + chunk + canvas
    assert raster.webp_size(data) == (4096, 3000)


def test_a_huge_or_torn_webp_is_refused_before_decoding() -> None:
    data = webp(64, 48)
    with pytest.raises(InvalidInput, match="over the limit"):
        codecs.check(data, ImageLimits(max_side=32))
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        codecs.check(data[:20])
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        codecs.check(data[: len(data) // 2])
