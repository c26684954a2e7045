"""DICOM decode cost per scan: the fast reader against pydicom on the same files.

Prints microseconds per scan (best of several rounds) for a 128x128 16-bit MR slice:
``decode`` (fast reader, the common case), ``decode_with_pydicom`` (the reference path,
same validation), plain ``pydicom.dcmread + pixel_array`` (the baseline, measured in the
same run), the fallback on RLE Lossless, and the whole ``decode_dicom`` step per
envelope (decode + tensor payload + attributes).

    .venv/bin/python bench/dicom_bench.py [--scans 2000] [--rounds 5] [--size 128]
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from inferstream.apps.eggs.dicom import decode, decode_dicom_step, decode_with_pydicom
from inferstream.envelope import new_envelope
from inferstream.steps import StepContext


def make_scan(size: int, syntax: str) -> bytes:
    """One MR slice with the flagship contract's tags."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["bench"])
    ds.Modality, ds.Manufacturer = "MR", "inferstream-sim"
    ds.PatientID, ds.PatientName = "EGG-000123", "EGG^EGG-000123"
    ds.AccessionNumber, ds.StationName = "TRAY-0042", "SCANNER-03"
    ds.AcquisitionDateTime = "20261122014944.123456"
    ds.ClinicalTrialTimePointID = "12"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    image = np.random.default_rng(0).normal(1000, 200, (size, size)).clip(0, 65535)
    ds.PixelData = image.astype(np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if syntax == RLELossless:
        ds.compress(RLELossless)
    else:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def per_scan_us(fn: Callable[[], object], scans: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(scans):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / scans * 1e6


def plain_pydicom(data: bytes) -> np.ndarray:
    return np.asarray(pydicom.dcmread(io.BytesIO(data)).pixel_array)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    n, rounds = args.scans, args.rounds
    explicit = make_scan(args.size, ExplicitVRLittleEndian)
    implicit = make_scan(args.size, ImplicitVRLittleEndian)
    rle = make_scan(args.size, RLELossless)
    step = decode_dicom_step(StepContext(pipeline="bench", stage="decode"))
    batch = [new_envelope(explicit, "application/dicom") for _ in range(100)]

    def timed(fn: Callable[[], object], divisor: int = 1) -> float:
        return per_scan_us(fn, max(1, n // divisor), rounds)

    baseline = timed(lambda: plain_pydicom(explicit), 4)
    rows = [
        ("pydicom dcmread + pixel_array (baseline)", baseline),
        ("decode_with_pydicom, explicit VR LE", timed(lambda: decode_with_pydicom(explicit), 4)),
        ("decode (fast), explicit VR LE", timed(lambda: decode(explicit))),
        ("decode (fast), implicit VR LE", timed(lambda: decode(implicit))),
        ("decode (fallback), RLE Lossless", timed(lambda: decode(rle), 10)),
        ("decode_dicom step, per envelope", timed(lambda: step.process(batch), 100) / 100),
    ]
    print(
        f"{args.size}x{args.size} uint16 MR slice, {len(explicit)} bytes; best of {rounds} rounds"
    )
    for name, micros in rows:
        print(f"  {name:<44} {micros:9.1f} us/scan   {baseline / micros:6.1f}x baseline speed")


if __name__ == "__main__":
    main()
