"""Tests of inferstream.apps.eggs.dicom: fast reader == pydicom, validation reasons, the step.

Scans are built with pydicom here (a small builder below) and converted with the real
DCMTK command-line tools (Debian package ``dcmtk``) to get files no code of ours wrote.
"""

from __future__ import annotations

import io
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicom_builder import make_dataset, to_bytes
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.dicom import (
    TENSOR_CONTENT_TYPE,
    DecodedScan,
    InvalidScan,
    ScanLimits,
    decode,
    decode_with_pydicom,
)
from inferstream.blobs import LocalBlobStore, check_in
from inferstream.envelope import Envelope, from_tensor, new_envelope
from inferstream.errors import BlobError, ConfigError, InvalidInput
from inferstream.steps import StepContext, build_step

Decoder = Callable[[bytes], DecodedScan]
BOTH: list[Decoder] = [decode, decode_with_pydicom]


def scan_bytes(syntax: str = ExplicitVRLittleEndian, **overrides: Any) -> bytes:
    return to_bytes(make_dataset(**overrides), syntax)


def expected_pixels(data: bytes) -> np.ndarray:
    """The image as pydicom alone decodes it, the reference for both paths."""
    import pydicom

    return np.asarray(pydicom.dcmread(io.BytesIO(data)).pixel_array)


def assert_same(fast: DecodedScan, slow: DecodedScan) -> None:
    assert fast.pixels.dtype == slow.pixels.dtype == np.uint16
    assert np.array_equal(fast.pixels, slow.pixels)
    for field in ("egg_id", "tray", "scanner", "acquired_at", "incubation_day", "modality"):
        assert getattr(fast, field) == getattr(slow, field), field
    assert (fast.transfer_syntax, fast.rows, fast.cols) == (
        slow.transfer_syntax,
        slow.rows,
        slow.cols,
    )


def is_zero_copy(scan: DecodedScan, data: bytes) -> bool:
    """True when the pixels view the input bytes, i.e. the fast reader decoded them."""
    return bool(np.shares_memory(scan.pixels, np.frombuffer(data, dtype=np.uint8)))


def dcmtk(tmp_path: Path, tool: str, data: bytes, *options: str) -> bytes:
    """Run a DCMTK tool on ``data`` and return the file it writes."""
    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    source.write_bytes(data)
    subprocess.run([tool, *options, str(source), str(target)], check=True, capture_output=True)
    return target.read_bytes()


# --- the fast reader agrees with pydicom -------------------------------------------------


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize(("rows", "cols", "seed"), [(128, 128, 1), (16, 16, 2), (64, 200, 3)])
def test_fast_path_equals_pydicom(syntax: str, rows: int, cols: int, seed: int) -> None:
    data = scan_bytes(syntax, rows=rows, cols=cols, seed=seed)
    fast, slow = decode(data), decode_with_pydicom(data)
    assert is_zero_copy(fast, data)
    assert_same(fast, slow)
    assert not fast.pixels.flags.writeable
    assert not slow.pixels.flags.writeable
    assert np.array_equal(fast.pixels, expected_pixels(data))
    assert fast.pixels.shape == (rows, cols)
    assert fast.attributes() == {
        "egg_id": f"EGG-{seed:06d}",
        "tray": f"TRAY-{seed:04d}",
        "scanner": "SCANNER-03",
        "acquired_at": "2026-11-22T01:49:44.123456+00:00",
        "incubation_day": str(4 + seed),
        "modality": "MR",
    }
    assert fast.transfer_syntax == syntax


def test_fast_path_masks_bits_above_bits_stored_like_pydicom() -> None:
    data = scan_bytes(BitsStored=12, HighBit=11)
    fast, slow = decode(data), decode_with_pydicom(data)
    assert_same(fast, slow)
    assert int(fast.pixels.max()) < 4096


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_fast_path_skips_private_tags_and_defined_length_sequences(syntax: str) -> None:
    ds = make_dataset(seed=5)
    ds.add_new(0x00091010, "LO", "private creator")
    ds.add_new(0x00091011, "OB", b"\x01\x02" * 50)
    item = Dataset()
    item.CodeValue = "X"
    ds.ReferencedImageSequence = Sequence([item])
    data = to_bytes(ds, syntax)
    assert b"\xff\xff\xff\xff" not in data
    fast = decode(data)
    assert is_zero_copy(fast, data)
    assert_same(fast, decode_with_pydicom(data))


def test_undefined_length_sequence_falls_back_to_pydicom() -> None:
    ds = make_dataset(seed=6)
    item = Dataset()
    item.CodeValue = "X"
    ds.ReferencedImageSequence = Sequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    data = to_bytes(ds)
    assert b"\xff\xff\xff\xff" in data
    scan = decode(data)
    assert not is_zero_copy(scan, data)
    assert_same(scan, decode_with_pydicom(data))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_scans_decode_through_the_fallback(syntax: str) -> None:
    native = scan_bytes(seed=7)
    data = scan_bytes(syntax, seed=7)
    scan = decode(data)
    assert scan.transfer_syntax == syntax
    assert np.array_equal(scan.pixels, decode(native).pixels)
    assert scan.attributes() == decode(native).attributes()


@pytest.mark.parametrize(
    ("overrides", "acquired_at"),
    [
        ({"AcquisitionDateTime": "20261122014944.123456+0100"}, "2026-11-22T00:49:44.123456"),
        ({"TimezoneOffsetFromUTC": "-0500"}, "2026-11-22T06:49:44.123456"),
        ({"AcquisitionDateTime": "202611220149"}, "2026-11-22T01:49:00.000000"),
        ({"AcquisitionDateTime": "20261122014944.5"}, "2026-11-22T01:49:44.500000"),
    ],
)
def test_acquisition_time_is_iso_8601_in_utc(overrides: dict[str, Any], acquired_at: str) -> None:
    data = scan_bytes(**overrides)
    for decoder in BOTH:
        assert decoder(data).acquired_at == acquired_at + "+00:00"


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg2000"])
def test_scans_from_the_generator_decode_to_the_rendered_image(syntax: str) -> None:
    from inferstream.apps.eggs.dicomgen import to_dicom_bytes
    from inferstream.apps.eggs.phantom import make_specs, render_batch

    specs = make_specs(3, seed=41)
    for spec, image in zip(specs, render_batch(specs, 64), strict=True):
        data = to_dicom_bytes(image, spec, syntax)
        scan = decode(data)
        assert is_zero_copy(scan, data) == (syntax == "explicit")
        assert_same(scan, decode_with_pydicom(data))
        assert np.array_equal(scan.pixels, image)
        assert scan.attributes() == {
            "egg_id": spec.egg_id,
            "tray": spec.tray,
            "scanner": spec.scanner,
            "acquired_at": spec.acquired_at.isoformat(timespec="microseconds"),
            "incubation_day": str(spec.day),
            "modality": "MR",
        }


def test_preamble_holding_an_executable_is_ignored() -> None:
    elf = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"#!/bin/sh\nrm -rf /\n" + b"MZ\x90\x00"
    data = to_bytes(make_dataset(seed=8), preamble=elf)
    assert data.startswith(b"\x7fELF")
    for decoder in BOTH:
        assert decoder(data).egg_id == "EGG-000008"


# --- files written and converted by DCMTK ------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "options", "syntax"),
    [
        ("dcmconv", ["+te"], "1.2.840.10008.1.2.1"),
        ("dcmconv", ["+ti"], "1.2.840.10008.1.2"),
        ("dcmconv", ["+tb"], "1.2.840.10008.1.2.2"),
        ("dcmcrle", [], "1.2.840.10008.1.2.5"),
        ("dcmcjpls", ["+el"], "1.2.840.10008.1.2.4.80"),
        ("dcmcjpeg", ["+e1"], "1.2.840.10008.1.2.4.70"),
    ],
)
def test_files_written_by_dcmtk_decode(
    tmp_path: Path, tool: str, options: list[str], syntax: str
) -> None:
    original = scan_bytes(seed=9)
    converted = dcmtk(tmp_path, tool, original, *options)
    scan = decode(converted)
    assert scan.transfer_syntax == syntax
    assert np.array_equal(scan.pixels, decode(original).pixels)
    assert scan.attributes() == decode(original).attributes()
    assert_same(scan, decode_with_pydicom(converted))


def test_dcmtk_deflated_file_is_refused_before_it_is_inflated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = dcmtk(tmp_path, "dcmconv", scan_bytes(seed=10), "+td")

    def no_inflating(*_: object, **__: object) -> bytes:
        raise AssertionError("the data set was inflated before its transfer syntax was checked")

    monkeypatch.setattr(zlib, "decompress", no_inflating)
    for decoder in BOTH:
        with pytest.raises(InvalidScan, match="deflated"):
            decoder(data)


def test_dcmtk_modified_modality_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "scan.dcm"
    source.write_bytes(scan_bytes(seed=11))
    subprocess.run(
        ["dcmodify", "-nb", "-m", "(0008,0060)=CT", str(source)], check=True, capture_output=True
    )
    dump = subprocess.run(["dcmdump", str(source)], check=True, capture_output=True, text=True)
    assert "[CT]" in dump.stdout
    for decoder in BOTH:
        with pytest.raises(InvalidScan, match="expected MR, got CT"):
            decoder(source.read_bytes())


# --- malformed scans give InvalidScan with the reason ------------------------------------


@pytest.mark.parametrize("decoder", BOTH)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_truncated_scans_are_refused_at_every_cut(decoder: Decoder, syntax: str) -> None:
    data = scan_bytes(syntax, seed=12)
    pixel_start = len(data) - 128 * 128 * 2
    cuts = [0, 1, 100, 131, 132, 140, 200, 300, pixel_start - 3, pixel_start + 10, len(data) - 1]
    for cut in cuts:
        with pytest.raises(InvalidScan) as caught:
            decoder(data[:cut])
        assert caught.value.args[0], cut


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        (0, "not DICOM: 0 bytes"),
        (131, "not DICOM: 131 bytes"),
        (138, "truncated: element header at byte 132 runs past the end of the 138 bytes"),
        (140, r"truncated: tag \(0002,0000\) at byte 132 declares 4 bytes but only 0 remain"),
        (-1, r"truncated: tag \(7FE0,0010\) at byte \d+ declares 32768 bytes but only 32767"),
    ],
)
def test_truncation_reason_names_the_byte_and_tag(cut: int, reason: str) -> None:
    data = scan_bytes(seed=13)
    with pytest.raises(InvalidScan, match=reason):
        decode(data[:cut])


MALFORMED: list[tuple[dict[str, Any], str]] = [
    ({"Modality": "CT"}, "wrong modality: expected MR, got CT"),
    ({"Modality": None}, "missing required tag Modality"),
    ({"PixelData": None}, "missing pixel data: the file has no Pixel Data (7FE0,0010)"),
    ({"PatientID": None}, "missing required tag PatientID"),
    ({"AccessionNumber": None}, "missing required tag AccessionNumber"),
    ({"StationName": None}, "missing required tag StationName"),
    ({"PatientID": "../../etc/passwd"}, "PatientID '../../etc/passwd' is not a valid egg id"),
    ({"BitsAllocated": 8}, "wrong BitsAllocated: expected 16"),
    ({"SamplesPerPixel": 3}, "wrong SamplesPerPixel: expected 1"),
    ({"PixelRepresentation": 1}, "signed pixels (PixelRepresentation 1) with"),  # negatives
    ({"PixelRepresentation": 2}, "PixelRepresentation must be 0 (unsigned) or 1"),
    ({"PhotometricInterpretation": "RGB"}, "wrong PhotometricInterpretation"),
    ({"NumberOfFrames": 2}, "multi-frame scan"),
    ({"Rows": 60000, "Columns": 60000}, "absurd dimensions: Rows is 60000, outside 16..1024"),
    ({"Columns": 8}, "absurd dimensions: Columns is 8"),
    ({"Rows": 64}, "pixel data is 32768 bytes but Rows x Columns x 2 = 16384"),
    ({"SOPInstanceUID": "1.2.3/../../x"}, "SOPInstanceUID '1.2.3/../../x' is not a valid UID"),
    ({"StudyInstanceUID": "1.2..3"}, "StudyInstanceUID '1.2..3' is not a valid UID"),
    ({"SeriesInstanceUID": "1.2.abc"}, "SeriesInstanceUID '1.2.abc' is not a valid UID"),
    ({"SOPInstanceUID": "1." + "2" * 63}, "is not a valid UID: it must be at most 64"),
    ({"AcquisitionDateTime": "20261301000000"}, "AcquisitionDateTime '20261301000000' is not"),
    ({"AcquisitionDateTime": None}, "AcquisitionDateTime (0008,002A) '' is missing"),
    ({"ClinicalTrialTimePointID": "99"}, "incubation day 0..30"),
    ({"TimezoneOffsetFromUTC": "+01:00"}, "TimezoneOffsetFromUTC '+01:00' is not +HHMM"),
    ({"ClinicalTrialTimePointID": "twelve"}, "'twelve' is missing or not an incubation day"),
]


@pytest.mark.parametrize("decoder", BOTH)
@pytest.mark.parametrize(("overrides", "reason"), MALFORMED)
def test_malformed_scans_are_refused_with_the_reason(
    decoder: Decoder, overrides: dict[str, Any], reason: str
) -> None:
    data = scan_bytes(**overrides)
    with pytest.raises(InvalidScan) as caught:
        decoder(data)
    assert reason in str(caught.value)
    assert isinstance(caught.value, InvalidInput)


@pytest.mark.parametrize("decoder", BOTH)
def test_every_problem_of_a_scan_is_said_at_once(decoder: Decoder) -> None:
    data = scan_bytes(Modality="CT", PatientID=None, ClinicalTrialTimePointID="99")
    with pytest.raises(InvalidScan) as caught:
        decoder(data)
    said = str(caught.value)
    assert said.startswith("3 problems: (1) wrong modality: expected MR, got CT; (2) missing "
                           "required tag PatientID"), said  # fmt: skip
    assert "(3) ClinicalTrialTimePointID (0012,0050) '99'" in said


@pytest.mark.parametrize("decoder", BOTH)
@pytest.mark.parametrize("bits", [16, 12])
def test_signed_pixels_are_taken_when_none_is_negative(decoder: Decoder, bits: int) -> None:
    rng = np.random.default_rng(4)
    values = rng.integers(0, 1 << (bits - 1), (64, 64), dtype=np.int16)
    fields = {"BitsStored": bits, "HighBit": bits - 1}
    signed = scan_bytes(rows=64, cols=64, PixelRepresentation=1,
                        PixelData=values.tobytes(), **fields)  # fmt: skip
    unsigned = scan_bytes(rows=64, cols=64, PixelData=values.astype(np.uint16).tobytes(),
                          **fields)  # fmt: skip
    assert np.array_equal(decoder(signed).pixels, decoder(unsigned).pixels)
    negative = values.copy()
    negative[10, 10] = -3
    with pytest.raises(InvalidScan, match="with 1 negative values"):
        decoder(scan_bytes(rows=64, cols=64, PixelRepresentation=1,
                           PixelData=negative.tobytes(), **fields))  # fmt: skip


def test_a_claimed_huge_image_is_refused_without_allocating() -> None:
    # 60000 x 60000 x 2 bytes would be 7.2 GB; the pixel data here is 32 bytes.
    data = scan_bytes(rows=4, cols=4, Rows=60000, Columns=60000)
    assert len(data) < 2000
    for decoder in BOTH:
        with pytest.raises(InvalidScan, match="absurd dimensions"):
            decoder(data)


def test_a_codestream_claiming_another_size_is_refused_before_decoding(tmp_path: Path) -> None:
    j2k = bytearray(scan_bytes(JPEG2000Lossless, seed=16))
    siz = j2k.find(b"\xff\x4f\xff\x51") + 2  # SIZ: marker, Lsiz, Rsiz, Xsiz, Ysiz
    j2k[siz + 6 : siz + 14] = (60000).to_bytes(4, "big") * 2
    jls = bytearray(dcmtk(tmp_path, "dcmcjpls", scan_bytes(seed=16)))
    sof = jls.find(b"\xff\xf7")  # SOF55: marker, length, precision, lines, samples
    jls[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    for data in (j2k, jls):
        with pytest.raises(InvalidScan, match="claims 60000x60000 pixels but Rows x Columns"):
            decode(bytes(data))


def test_an_oversized_rle_frame_is_refused_before_decoding() -> None:
    ds = make_dataset(seed=17)
    ds.compress(RLELossless)
    # Two segments of replicate runs: 160 KB that would expand to 10 MB.
    segment = b"\x81\x00" * 40000
    header = struct.pack("<3I", 2, 64, 64 + len(segment)).ljust(64, b"\x00")
    ds.PixelData = encapsulate([header + segment + segment])
    with pytest.raises(InvalidScan, match="compressed frame is 160064 bytes, more than"):
        decode(to_bytes(ds, RLELossless))


@pytest.mark.parametrize("decoder", BOTH)
def test_random_and_empty_bytes_are_not_dicom(decoder: Decoder) -> None:
    rng = np.random.default_rng(14)
    for data in (b"", b"DICM", rng.bytes(10), rng.bytes(5000)):
        with pytest.raises(InvalidScan, match="not DICOM"):
            decoder(data)


def test_limits_are_configurable_and_checked() -> None:
    data = scan_bytes(rows=32, cols=32)
    assert decode(data, ScanLimits(min_side=32, max_side=32)).rows == 32
    with pytest.raises(InvalidScan, match=r"outside 64\.\.1024"):
        decode(data, ScanLimits(min_side=64))
    with pytest.raises(InvalidScan, match=f"scan is {len(data)} bytes, over the limit of 1000"):
        decode(data, ScanLimits(max_bytes=1000))
    with pytest.raises(ConfigError, match="min_side <= max_side"):
        ScanLimits(min_side=100, max_side=10)


def outcome(decoder: Decoder, data: bytes) -> DecodedScan | InvalidScan:
    """The scan, or the InvalidScan raised; any other exception fails the test."""
    try:
        return decoder(data)
    except InvalidScan as exc:
        return exc


def mutate(original: bytes, rng: np.random.Generator) -> bytes:
    """A seeded random truncation and/or 1-3 byte flips, half of them in the header."""
    data = bytearray(original)
    if rng.random() < 0.3:
        data = data[: int(rng.integers(0, len(data)))]
    region = len(data) if rng.random() < 0.5 else min(len(data), 1000)
    for _ in range(int(rng.integers(1, 4))):
        if region:
            data[int(rng.integers(0, region))] = int(rng.integers(0, 256))
    return bytes(data)


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless]
)
def test_fuzzed_scans_decode_or_raise_invalid_scan_and_both_paths_agree(syntax: str) -> None:
    rng = np.random.default_rng(15)
    original = scan_bytes(syntax, rows=32, cols=48, seed=15)
    accepted = refused = 0
    for _ in range(300):
        data = mutate(original, rng)
        fast, slow = outcome(decode, data), outcome(decode_with_pydicom, data)
        if isinstance(fast, InvalidScan):
            assert isinstance(slow, InvalidScan), f"only the fast path refused: {fast}"
            refused += 1
        else:
            assert isinstance(slow, DecodedScan), f"only pydicom refused: {slow}"
            assert_same(fast, slow)
            accepted += 1
    assert accepted > 0
    assert refused > 0


# --- the pipeline step --------------------------------------------------------------------


def test_step_decodes_a_mixed_batch_into_outcomes(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    context = StepContext(pipeline="eggs", stage="decode", blobs=blobs)
    step = build_step("decode_dicom", context, {}, APP.steps)
    good = scan_bytes(seed=21)
    claim_checked = check_in(
        new_envelope(scan_bytes(ImplicitVRLittleEndian, seed=22), "application/dicom"),
        blobs,
        threshold=0,
    )
    lost_blob = new_envelope(b"x", "application/dicom")
    lost_blob.payload.blob.CopyFrom(blobs.put(b"gone", lost_blob.tenant))
    next((tmp_path / "blobs").rglob(lost_blob.payload.blob.sha256)).unlink()
    batch = [
        new_envelope(good, "application/dicom", tenant="farm-a", key="upload-1"),
        new_envelope(scan_bytes(Modality="CT"), "application/dicom"),
        claim_checked,
        new_envelope(b"\x00" * 64, "application/dicom"),
        lost_blob,
        new_envelope(scan_bytes(RLELossless, seed=23), "application/dicom", tenant="farm-b"),
        Envelope(id="already-decoded"),
    ]
    batch[-1].payload.tensor.dtype = "uint16"
    assert claim_checked.payload.WhichOneof("body") == "blob"

    outcomes = step.process(batch)

    assert len(outcomes) == len(batch)
    first, ct, second, junk, lost, third, tensor = outcomes
    for outcome, seed, tenant in (
        (first, 21, "farm-a"),
        (second, 22, "default"),
        (third, 23, "farm-b"),
    ):
        assert isinstance(outcome, Envelope)
        assert outcome.tenant == tenant
        assert outcome.partition_key == f"EGG-{seed:06d}"
        assert outcome.payload.content_type == TENSOR_CONTENT_TYPE
        image = from_tensor(outcome.payload.tensor)
        assert image.dtype == np.uint16
        assert image.shape == (128, 128)
        assert np.array_equal(image, decode(scan_bytes(seed=seed)).pixels)
        assert dict(outcome.attributes) == decode(scan_bytes(seed=seed)).attributes()
    assert isinstance(first, Envelope)
    assert first.id == batch[0].id  # the worker, not the step, derives output ids
    assert isinstance(ct, InvalidScan)
    assert "expected MR, got CT" in str(ct)
    assert isinstance(junk, InvalidScan)
    assert "not DICOM" in str(junk)
    assert isinstance(lost, BlobError)
    assert isinstance(tensor, InvalidScan)
    assert "payload is tensor, expected DICOM bytes" in str(tensor)
    assert batch[0].payload.WhichOneof("body") == "inline"  # inputs are left untouched


def test_step_partition_key_and_limits_come_from_parameters() -> None:
    context = StepContext(pipeline="eggs", stage="decode")
    step = build_step("decode_dicom", context, {"partition_by": "tray", "max_side": 64}, APP.steps)
    small, large = scan_bytes(rows=64, cols=64, seed=31), scan_bytes(seed=32)
    batch = [new_envelope(small, "application/dicom"), new_envelope(large, "application/dicom")]
    fine, too_large = step.process(batch)
    assert isinstance(fine, Envelope)
    assert fine.partition_key == "TRAY-0031"
    assert isinstance(too_large, InvalidScan)
    assert "Rows is 128, outside 16..64" in str(too_large)
    with pytest.raises(ConfigError, match="partition_by 'colour' must be egg_id, tray or scanner"):
        build_step("decode_dicom", context, {"partition_by": "colour"}, APP.steps)
    with pytest.raises(ConfigError, match="bad parameters"):
        build_step("decode_dicom", context, {"max_pixels": 5}, APP.steps)
