"""Seed inputs of every fuzz target: valid ones, so mutations start deep in each format.

``python tests/fuzz/fuzz_seeds.py FOLDER`` writes them into FOLDER/TARGET/ (``make fuzz``).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import numpy as np
from dicom_builder import jpeg_baseline_bytes, make_dataset, to_bytes

from inferstream.envelope import EnvelopeBatch, new_envelope

ROOT = Path(__file__).parents[2]
TARGETS = ("dicom", "image", "envelopes", "pipeline")


def write_seeds(target: str, folder: Path) -> Path:
    """Valid inputs of ``target`` in ``folder`` (made), for the fuzzer to start from."""
    folder.mkdir(parents=True, exist_ok=True)
    fixed = {"AccessionNumber": "TRAY-0042", "ClinicalTrialTimePointID": "12"}
    scans = [to_bytes(make_dataset(32, 32, seed, **fixed)) for seed in range(2)]
    scans.append(to_bytes(make_dataset(32, 32, 3, **fixed), syntax="1.2.840.10008.1.2.5"))
    image = np.arange(24 * 16, dtype=np.uint8).reshape(24, 16)
    npy = io.BytesIO()
    np.save(npy, image.astype(np.float32))
    batch = EnvelopeBatch(
        envelopes=[
            new_envelope(scan, "application/dicom", envelope_id=f"e{i}")
            for i, scan in enumerate(scans[:2])
        ]
    )
    seeds: dict[str, list[bytes]] = {
        "dicom": scans,
        "image": [
            cv2.imencode(".png", image)[1].tobytes(),
            cv2.imencode(".jpg", image)[1].tobytes(),
            cv2.imencode(".webp", image)[1].tobytes(),
            npy.getvalue(),
            scans[0],
            scans[2],  # RLE: compressed frames
            jpeg_baseline_bytes(16, 16),
        ],
        "envelopes": [batch.SerializeToString()],
        "pipeline": [
            (ROOT / "src/inferstream/apps/eggs/eggs.yaml").read_bytes(),
            (ROOT / "src/inferstream/apps/leaves/leaves.yaml").read_bytes(),
            (ROOT / "src/inferstream/apps/filedrop/filedrop.yaml").read_bytes(),
        ],
    }
    for i, data in enumerate(seeds[target]):
        (folder / f"seed-{i}").write_bytes(data)
    return folder


if __name__ == "__main__":
    for name in TARGETS:
        write_seeds(name, Path(sys.argv[1]) / name)
