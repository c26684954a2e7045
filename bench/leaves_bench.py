"""The leaves pipeline against its own step ceiling, measured in the same run.

Ceiling: the pipeline's steps called directly in this process on the same photos
(detect: decode, heatmap, components, crops written to the blob store; then the five
graders on every crop), no bus, no store: the most the steps allow on one core.
Pipeline: the same photos through ``leaves.yaml`` on the embedded bus and SQLite
(every stage in a thread of one process, ``inferstream example leaves``'s way), from
the first photo sent to the last record stored. Both are reported as photos/s and
leaf grades/s::

    .venv/bin/python bench/leaves_bench.py [--positions 8] [--days 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from inferstream.apps.leaves.detect import detect_step
from inferstream.apps.leaves.example import TrialSettings, run_trial
from inferstream.apps.leaves.field import photo_id
from inferstream.apps.leaves.grade import grade_step
from inferstream.apps.leaves.simulator import DISEASES, encode_png, simulate
from inferstream.blobs import LocalBlobStore
from inferstream.envelope import Envelope, new_envelope
from inferstream.steps import StepContext


def ceiling(positions: int, days: int, work: Path) -> tuple[float, int, int]:
    """Seconds, photos and crops for the steps alone."""
    blobs = LocalBlobStore(work / "ceiling-blobs")
    photos = list(simulate(positions, days, seed=0, tenant="bench"))
    envs = []
    for photo in photos:
        data = encode_png(photo.image)
        attrs = {"position_id": photo.position_id, "date": photo.date, "area": photo.area}
        envs.append(new_envelope(data, "image/png", tenant="bench", attributes=attrs,
                                 envelope_id=photo_id(photo)))  # fmt: skip
    context = StepContext(pipeline="bench", stage="detect", blobs=blobs)
    detect = detect_step(context)
    graders = [grade_step(context, disease=d) for d in DISEASES]
    started = time.monotonic()
    crops: list[Envelope] = []
    for i in range(0, len(envs), 8):
        for outcome in detect.process(envs[i : i + 8]):
            assert isinstance(outcome, list)
            crops += outcome
    for grader in graders:
        for i in range(0, len(crops), 64):
            grader.process(crops[i : i + 64])
    return time.monotonic() - started, len(photos), len(crops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seconds, photos, crops = ceiling(args.positions, args.days, Path(tmp))
        summary = run_trial(TrialSettings(positions=args.positions, days=args.days,
                                          workdir=Path(tmp) / "trial", quiet=True))  # fmt: skip
    assert summary["ok"], "the pipeline lost or doubled records; see the example's summary"
    grades = crops * len(DISEASES)
    print(f"{photos} photos, {crops} leaves, {grades} grades")
    print(f"{'':10} {'seconds':>8} {'photos/s':>9} {'grades/s':>9}")
    print(f"{'ceiling':10} {seconds:8.2f} {photos / seconds:9.1f} {grades / seconds:9.1f}")
    p = summary["seconds"]
    print(f"{'pipeline':10} {p:8.2f} {photos / p:9.1f} {grades / p:9.1f}")
    print(f"pipeline / ceiling: {seconds / p:.2f}")


if __name__ == "__main__":
    main()
