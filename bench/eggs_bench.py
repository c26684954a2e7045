"""Egg pipeline throughput: scan generation, DICOM encoding, preprocessing, inference and
the not-an-egg guard.

``python bench/eggs_bench.py`` prints figures; nothing here is a test. Inference runs
the shipped model on one thread (the serving session options) at several batch sizes.
"""

from __future__ import annotations

import time

import numpy as np

from inferstream.apps.eggs.dicomgen import to_dicom_bytes
from inferstream.apps.eggs.domain import load_domain
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.apps.eggs.preprocess import preprocess_batch, preprocess_with_extents
from inferstream.classify import load_model


def _rate(label: str, count: int, seconds: float, unit: str) -> None:
    print(f"{label:<34} {count / seconds:10.0f} {unit}/s   {seconds / count * 1e3:8.3f} ms each")


def main() -> None:
    specs = make_specs(2048, seed=42)
    started = time.perf_counter()
    scans = np.concatenate([render_batch(specs[i : i + 256]) for i in range(0, len(specs), 256)])
    _rate("generate 128x128 scans", len(scans), time.perf_counter() - started, "scans")
    for syntax in ("explicit", "rle", "jpeg2000"):
        started = time.perf_counter()
        for scan, spec in zip(scans[:200], specs[:200], strict=True):
            to_dicom_bytes(scan, spec, transfer_syntax=syntax)
        _rate(f"DICOM encode ({syntax})", 200, time.perf_counter() - started, "scans")
    for batch in (1, 64, 256):
        count = 0
        started = time.perf_counter()
        for i in range(0, 1024, batch):
            preprocess_batch(scans[i : i + batch])
            count += len(scans[i : i + batch])
        _rate(f"preprocess, batch {batch}", count, time.perf_counter() - started, "scans")
    model = load_model("egg_sexing")
    inputs = preprocess_batch(scans[:1024])
    model.predict(inputs[:64])  # warm-up
    for batch in (1, 16, 64):
        started = time.perf_counter()
        for i in range(0, 512, batch):
            model.predict(inputs[i : i + batch])
        _rate(f"inference, batch {batch}, 1 thread", 512, time.perf_counter() - started, "images")
    # The not-an-egg guard runs on every scan before inference: its cost beside it.
    guard = load_domain()
    _, extents = preprocess_with_extents(scans[:1024])
    started = time.perf_counter()
    for i in range(0, 1024, 64):
        guard.is_egg(guard.scores(inputs[i : i + 64]), extents[i : i + 64])
    _rate("egg_guard, batch 64", 1024, time.perf_counter() - started, "scans")


if __name__ == "__main__":
    main()
