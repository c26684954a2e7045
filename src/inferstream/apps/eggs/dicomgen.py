"""Write generated egg scans as real DICOM (MR Image Storage), per the flagship contract.

:func:`to_dicom_bytes` encodes one scan with its :class:`~inferstream.apps.eggs.phantom.EggSpec`
metadata (egg id, tray, scanner, acquisition time, incubation day); the ground-truth
sex never goes into the DICOM. Pixel data are native (Explicit VR Little Endian, the
default) or losslessly compressed: RLE Lossless (pydicom's own encoder) or JPEG 2000
Lossless (pylibjpeg-openjpeg). UIDs are derived from the egg's seed, so a data set is
reproducible byte for byte. :func:`write_dataset` writes a folder of ``.dcm`` files and
a ground-truth ``labels.csv``; ``python -m inferstream.apps.eggs.dicomgen --help``.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from inferstream.apps.eggs.phantom import (
    DEFAULT_DIFFICULTY,
    DEFAULT_MIX,
    DEFAULT_SIZE,
    EggSpec,
    make_specs,
    render_batch,
)
from inferstream.errors import ConfigError

#: Transfer syntaxes this generator can write, by short name.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
}
MANUFACTURER = "inferstream-sim"
# Field strength (T), repetition and echo time (ms) of each simulated scanner (T2 TSE).
_SCANNER_PROTOCOLS = (
    (1.5, 3000.0, 90.0),
    (3.0, 2800.0, 85.0),
    (3.0, 3200.0, 95.0),
    (1.5, 2500.0, 80.0),
)
_FIELD_OF_VIEW_MM = 80.0


def _transfer_syntax(name_or_uid: str) -> UID:
    if name_or_uid in TRANSFER_SYNTAXES:
        return TRANSFER_SYNTAXES[name_or_uid]
    if name_or_uid not in TRANSFER_SYNTAXES.values():
        raise ConfigError(
            f"cannot write transfer syntax {name_or_uid!r}; use one of {sorted(TRANSFER_SYNTAXES)} "
            f"or their UIDs"
        )
    return UID(name_or_uid)


def _uid(spec: EggSpec, kind: str, key: str) -> UID:
    # Seed-derived entropy makes the UIDs (and so the files) reproducible.
    return generate_uid(entropy_srcs=[kind, key, str(spec.seed)])


def _header(spec: EggSpec, rows: int, cols: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = _uid(spec, "sop", spec.egg_id)
    ds.StudyInstanceUID = _uid(spec, "study", spec.tray)
    ds.SeriesInstanceUID = _uid(spec, "series", spec.egg_id)
    ds.Modality = "MR"
    ds.PatientID = spec.egg_id
    ds.PatientName = f"EGG^{spec.egg_id}"
    ds.AccessionNumber = spec.tray
    ds.StationName = spec.scanner
    ds.Manufacturer = MANUFACTURER
    stamp = spec.acquired_at
    ds.AcquisitionDateTime = stamp.strftime("%Y%m%d%H%M%S.%f")
    ds.StudyDate, ds.StudyTime = stamp.strftime("%Y%m%d"), stamp.strftime("%H%M%S")
    ds.TimezoneOffsetFromUTC = "+0000"
    ds.ClinicalTrialTimePointID = str(spec.day)
    tesla, tr, te = _SCANNER_PROTOCOLS[(int(spec.scanner[-2:]) - 1) % len(_SCANNER_PROTOCOLS)]
    ds.MagneticFieldStrength, ds.RepetitionTime, ds.EchoTime = tesla, tr, te
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SliceThickness = 2.0
    ds.PixelSpacing = [round(_FIELD_OF_VIEW_MM / rows, 4), round(_FIELD_OF_VIEW_MM / cols, 4)]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    return ds


def to_dicom_bytes(
    image: NDArray[np.uint16], spec: EggSpec, transfer_syntax: str = ExplicitVRLittleEndian
) -> bytes:
    """One scan as a DICOM Part 10 file (bytes); ``transfer_syntax`` by name or UID."""
    if image.ndim != 2 or image.dtype != np.uint16:
        raise ConfigError(f"need a 2-D uint16 image, got {image.dtype} {list(image.shape)}")
    uid = _transfer_syntax(transfer_syntax)
    ds = _header(spec, *image.shape)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    pixels = np.ascontiguousarray(image, dtype="<u2")
    if uid == ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = pixels.tobytes()
    else:
        try:
            ds.compress(uid, pixels, generate_instance_uid=False)
        except (RuntimeError, ValueError, ImportError) as exc:
            raise ConfigError(
                f"cannot encode {uid.name} here: {exc}; install the pylibjpeg plugins"
            ) from exc
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_dataset(
    folder: str | Path,
    n: int,
    seed: int = 0,
    difficulty: float = DEFAULT_DIFFICULTY,
    *,
    mix: Sequence[float] = DEFAULT_MIX,
    size: int = DEFAULT_SIZE,
    transfer_syntax: str = "explicit",
) -> Path:
    """Write ``n`` scans as ``<egg id>.dcm`` plus ``labels.csv`` (egg_id,label); return the CSV."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    labels_path = out / "labels.csv"
    with labels_path.open("w", newline="") as labels:
        writer = csv.writer(labels)
        writer.writerow(["egg_id", "label"])
        for start in range(0, n, 256):
            specs = make_specs(min(256, n - start), seed, difficulty, mix, start=start)
            for spec, image in zip(specs, render_batch(specs, size), strict=True):
                data = to_dicom_bytes(image, spec, transfer_syntax)
                (out / f"{spec.egg_id}.dcm").write_bytes(data)
                writer.writerow([spec.egg_id, spec.label])
    return labels_path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write generated egg MRI scans as DICOM.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("-n", type=int, default=100, help="number of scans (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--transfer-syntax", choices=sorted(TRANSFER_SYNTAXES), default="explicit")
    args = parser.parse_args(argv)
    path = write_dataset(
        args.folder,
        args.n,
        args.seed,
        args.difficulty,
        size=args.size,
        transfer_syntax=args.transfer_syntax,
    )
    print(f"wrote {args.n} scans and {path}")


if __name__ == "__main__":
    main()


__all__ = ["MANUFACTURER", "TRANSFER_SYNTAXES", "to_dicom_bytes", "write_dataset"]
