"""DICOM scans built with pydicom for tests, as the flagship contract describes them.

Shared by the decoder tests and the API tests, so both exercise the same tags.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    generate_uid,
)


def make_dataset(rows: int = 128, cols: int = 128, seed: int = 0, **overrides: Any) -> Dataset:
    """An MR slice as the flagship contract describes it; ``overrides`` set or drop tags."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed)])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study{seed}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series{seed}"])
    ds.Modality = "MR"
    ds.Manufacturer = "inferstream-sim"
    ds.AccessionNumber = f"TRAY-{seed % 100:04d}"
    ds.StationName = "SCANNER-03"
    ds.AcquisitionDateTime = "20261122014944.123456"
    ds.PatientName = f"EGG^EGG-{seed:06d}"
    ds.PatientID = f"EGG-{seed:06d}"
    ds.ClinicalTrialTimePointID = str(4 + seed % 10)
    ds.MagneticFieldStrength = 9.4
    ds.RepetitionTime = 500.0
    ds.EchoTime = 12.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = rng.integers(0, 65536, (rows, cols), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with warnings.catch_warnings():  # some overrides are invalid on purpose
        warnings.simplefilter("ignore")
        for keyword, value in overrides.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return ds


def to_bytes(ds: Dataset, syntax: str = ExplicitVRLittleEndian, preamble: bytes = b"") -> bytes:
    if syntax != ds.file_meta.TransferSyntaxUID:
        if syntax in (RLELossless, JPEG2000Lossless):
            ds.compress(syntax)
        else:
            ds.file_meta.TransferSyntaxUID = UID(syntax)
    if preamble:
        ds.preamble = preamble.ljust(128, b"\x00")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def jpeg_baseline_bytes(
    rows: int = 16, cols: int = 16, claim: tuple[int, int] | None = None
) -> bytes:
    """An 8-bit greyscale image as a JPEG Baseline DICOM (any modality's, not an egg's);
    ``claim`` rewrites the codestream's start-of-frame to another (rows, cols)."""
    ok, encoded = cv2.imencode(".jpg", np.full((rows, cols), 100, np.uint8))
    assert ok
    codestream = bytearray(encoded.tobytes())
    if claim is not None:
        sof = codestream.find(b"\xff\xc0")  # SOF0: marker, length, precision, then sizes
        codestream[sof + 5 : sof + 9] = claim[0].to_bytes(2, "big") + claim[1].to_bytes(2, "big")
    ds = make_dataset(rows, cols, 5, Modality="CT", BitsAllocated=8, BitsStored=8, HighBit=7)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([bytes(codestream)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return to_bytes(ds, JPEGBaseline8Bit)
