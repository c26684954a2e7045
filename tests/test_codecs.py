"""The core's codecs: each content type sniffed, checked and rendered, with no
application's contract in the way."""

from __future__ import annotations

import io
import resource
import zlib

import cv2
import numpy as np
import pytest
from dicom_builder import jpeg_baseline_bytes, make_dataset, to_bytes

from inferstream import codecs
from inferstream.codecs import Checked, Codec, ImageLimits, UnsupportedContent
from inferstream.errors import InvalidInput


def png(width: int = 32, height: int = 24) -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((height, width), 128, np.uint8))
    assert ok
    return bytes(encoded)


def jpeg() -> bytes:
    ok, encoded = cv2.imencode(".jpg", np.full((20, 30, 3), 90, np.uint8))
    assert ok
    return bytes(encoded)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def ct_dicom() -> bytes:
    """A CT image: no egg's scan, but a good DICOM for the core."""
    return to_bytes(make_dataset(48, 40, 7, Modality="CT", PatientID="anyone"))


@pytest.mark.parametrize(
    ("data", "content_type", "size"),
    [
        (png(), "image/png", ("32", "24")),
        (jpeg(), "image/jpeg", ("30", "20")),
        (npy(np.zeros((16, 8), np.uint16)), "application/x-npy", ("8", "16")),
        (ct_dicom(), "application/dicom", ("40", "48")),
    ],
)
def test_each_kind_is_sniffed_checked_and_rendered(
    data: bytes, content_type: str, size: tuple[str, str]
) -> None:
    checked = codecs.check(data)
    assert checked.content_type == content_type
    assert (checked.attributes["width"], checked.attributes["height"]) == size
    rendered = codecs.render_png(checked.data, content_type)
    image = cv2.imdecode(np.frombuffer(rendered, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape[:2] == (int(size[1]), int(size[0]))


def test_a_generic_dicom_keeps_its_modality_and_loses_its_preamble() -> None:
    data = to_bytes(make_dataset(32, 32, 3, Modality="CT"), preamble=b"MZ\x90\x00" + b"\xcc" * 60)
    checked = codecs.check(data)
    assert checked.attributes["modality"] == "CT"
    assert checked.data[:128] == bytes(128) and checked.data[128:] == data[128:]


def test_limits_are_read_from_the_header_before_decoding() -> None:
    with pytest.raises(InvalidInput, match="over the limit"):
        codecs.check(png(64, 8), ImageLimits(max_side=32))
    with pytest.raises(InvalidInput, match="over the limit"):
        codecs.check(ct_dicom(), ImageLimits(max_side=32))


def test_a_compressed_dicom_frame_is_checked_against_the_header_before_decoding() -> None:
    """Found by fuzzing: 1 KB whose JPEG frame claims 30000x30000 made the decoder take
    4 GB. The codestream's own size must match Rows and Columns before anything decodes."""
    checked = codecs.check(jpeg_baseline_bytes(16, 24))
    assert (checked.attributes["width"], checked.attributes["height"]) == ("24", "16")
    bomb = jpeg_baseline_bytes(16, 16, claim=(30000, 30000))
    assert len(bomb) < 2000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for reader in (codecs.check, lambda data: codecs.codec_for("application/dicom").decode(data)):
        with pytest.raises(InvalidInput, match="claims 30000x30000 pixels but Rows x Columns"):
            reader(bomb)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200_000, f"refusing the bomb took {grown_kib} KiB"


def test_a_png_chunk_longer_than_the_file_is_refused_before_decoding() -> None:
    """Found by fuzzing: 131 bytes whose IDAT chunk claims 2 GB made OpenCV's reader
    take 2 GB to refuse them. Each chunk's length must fit in what follows."""
    good = png()
    assert codecs.check(good + b"trailing bytes after IEND").content_type == "image/png"
    bomb = good[:33] + (2_098_215_125).to_bytes(4, "big") + good[37:]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidInput, match=r"chunk 1 \(b'IDAT'\) at byte 33 claims 2098215125"):
        codecs.check(bomb)
    with pytest.raises(InvalidInput, match="no IEND chunk"):
        codecs.check(good[:-12])
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200_000, f"refusing the bomb took {grown_kib} KiB"


def test_a_deflated_dicom_is_refused_before_it_is_inflated(monkeypatch: pytest.MonkeyPatch) -> None:
    data = to_bytes(make_dataset(16, 16, 2, Modality="CT"), "1.2.840.10008.1.2.1.99")

    def no_inflating(*_: object, **__: object) -> bytes:
        raise AssertionError("the data set was inflated before its transfer syntax was checked")

    monkeypatch.setattr(zlib, "decompress", no_inflating)
    with pytest.raises(InvalidInput, match="deflated data sets are refused"):
        codecs.check(data)


def test_unknown_bytes_and_refused_kinds_are_unsupported() -> None:
    with pytest.raises(UnsupportedContent, match="none of the known kinds"):
        codecs.check(b"#!/bin/sh\n")
    with pytest.raises(UnsupportedContent, match="does not take image/png"):
        codecs.check(png(), accepted=("application/dicom",))


def test_an_applications_check_takes_the_place_of_the_codecs() -> None:
    seen: list[bytes] = []

    def own(data: bytes, limits: ImageLimits) -> Checked:
        seen.append(data)
        return Checked(data, "image/png", {"camera": "cam-1"}, key="cam-1")

    checked = codecs.check(png(), overrides={"image/png": own})
    assert checked.key == "cam-1" and seen == [checked.data]


def test_a_registered_codec_is_sniffed_and_rendered() -> None:
    magic = b"TOYIMG"

    def check(data: bytes, limits: ImageLimits) -> Checked:
        return Checked(data, "image/x-toy", {"width": "2", "height": "2"})

    def decode(data: bytes) -> np.ndarray:
        return np.frombuffer(data[len(magic) :], np.uint8).reshape(2, 2)

    codecs.register_codec(Codec("image/x-toy", lambda d: d.startswith(magic), check, decode))
    toy = magic + bytes([0, 64, 128, 255])
    assert codecs.check(toy).content_type == "image/x-toy"
    assert codecs.render_png(toy, "image/x-toy").startswith(b"\x89PNG")
    assert "image/x-toy" in codecs.content_types()


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_decode_reads_every_header_version_and_order_and_refuses_the_rest(
    version: tuple[int, int],
) -> None:
    from inferstream.codecs import npy

    array = np.arange(48, dtype=np.uint16).reshape(6, 8)
    for ordered in (array, np.asfortranarray(array), array.astype(">f4")):
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, ordered, version=version)
        data = buffer.getvalue()
        decoded = npy.decode(data)
        assert np.array_equal(decoded, ordered) and decoded.dtype == ordered.dtype
        decoded[0, 0] = 7  # a copy the caller may write to
        with pytest.raises(InvalidInput, match="truncated or corrupt"):
            npy.decode(data[:-2])
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput, match="objects"):
        npy.decode(objects.getvalue())
    with pytest.raises(InvalidInput, match=r"no \.npy header"):
        npy.decode(b"\x93NUMPY")
