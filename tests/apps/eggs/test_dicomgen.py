"""DICOM written by the generator: readable, tagged per the contract, lossless."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage, RLELossless

from inferstream.apps.eggs.dicom import decode
from inferstream.apps.eggs.dicomgen import to_dicom_bytes, write_dataset
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.errors import ConfigError


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, object]:
    specs = make_specs(3, seed=11)
    return render_batch(specs)[2], specs[2]


def test_dicom_carries_the_contract_tags_and_not_the_label(scan: tuple) -> None:
    image, spec = scan
    data = to_dicom_bytes(image, spec)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == MRImageStorage
    assert (ds.Modality, ds.PatientID, str(ds.PatientName)) == (
        "MR",
        "EGG-000002",
        "EGG^EGG-000002",
    )
    assert (ds.AccessionNumber, ds.StationName) == (spec.tray, spec.scanner)
    assert ds.Manufacturer == "inferstream-sim"
    assert ds.AcquisitionDateTime == spec.acquired_at.strftime("%Y%m%d%H%M%S.%f")
    assert ds.ClinicalTrialTimePointID == "12"
    assert float(ds.MagneticFieldStrength) in (1.5, 3.0)
    assert float(ds.RepetitionTime) > float(ds.EchoTime) > 0
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (
        128,
        128,
        16,
        16,
        15,
    )
    assert (ds.PixelRepresentation, ds.SamplesPerPixel) == (0, 1)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    uids = {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    assert len(uids) == 3 and all(pydicom.uid.UID(u).is_valid for u in uids)
    assert np.array_equal(ds.pixel_array, image)
    assert b"female" not in data and b"male" not in data


def test_the_same_scan_gives_the_same_bytes(scan: tuple) -> None:
    image, spec = scan
    assert to_dicom_bytes(image, spec) == to_dicom_bytes(image, spec)
    other = make_specs(4, seed=11)[3]
    assert to_dicom_bytes(image, other) != to_dicom_bytes(image, spec)


@pytest.mark.parametrize(("name", "uid"), [("rle", RLELossless), ("jpeg2000", JPEG2000Lossless)])
def test_compressed_scans_decode_to_identical_pixels(scan: tuple, name: str, uid: str) -> None:
    image, spec = scan
    for syntax in (name, uid):
        ds = pydicom.dcmread(io.BytesIO(to_dicom_bytes(image, spec, transfer_syntax=syntax)))
        assert ds.file_meta.TransferSyntaxUID == uid
        assert ds.pixel_array.dtype == np.uint16
        assert np.array_equal(ds.pixel_array, image)


def test_the_pipeline_decoder_reads_what_the_generator_writes(scan: tuple) -> None:
    image, spec = scan
    for syntax in ("explicit", "rle", "jpeg2000"):
        decoded = decode(to_dicom_bytes(image, spec, transfer_syntax=syntax))
        assert np.array_equal(decoded.pixels, image)
        assert (decoded.egg_id, decoded.tray, decoded.scanner) == (
            spec.egg_id,
            spec.tray,
            spec.scanner,
        )
        assert decoded.incubation_day == 12


def test_unknown_transfer_syntax_is_refused(scan: tuple) -> None:
    image, spec = scan
    with pytest.raises(ConfigError, match="jpeg2000"):
        to_dicom_bytes(image, spec, transfer_syntax="1.2.840.10008.1.2.4.50")


def test_write_dataset_writes_scans_and_ground_truth(tmp_path: Path) -> None:
    labels_path = write_dataset(tmp_path / "set", n=5, seed=3, transfer_syntax="rle")
    with labels_path.open() as handle:
        rows = list(csv.DictReader(handle))
    specs = make_specs(5, seed=3)
    assert [(r["egg_id"], r["label"]) for r in rows] == [(s.egg_id, s.label) for s in specs]
    files = sorted((tmp_path / "set").glob("*.dcm"))
    assert [f.stem for f in files] == [s.egg_id for s in specs]
    first = pydicom.dcmread(files[0])
    assert np.array_equal(first.pixel_array, render_batch(specs[:1])[0])
