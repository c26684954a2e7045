"""The cameras production pipeline against its own step ceiling, measured in the same run.

Ceiling: the ``aggregate`` and ``estimate`` steps called directly in this process on the
same frames, in batches of 256 (the stages' batch size), no bus, no store: the most the
per-camera work allows on one core (the fusion is a few microseconds a window and is
left out).
Pipeline: the same frames, all on the embedded bus first, then ``cameras.yaml`` (every
stage in a thread of this process) from start to the last facility state stored;
frames/s and states/s::

    .venv/bin/python bench/cameras_bench.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from inferstream.apps.cameras import APP
from inferstream.apps.cameras.aggregate import AggregateStep
from inferstream.apps.cameras.estimate import EstimateStep
from inferstream.apps.cameras.layout import FacilityLayout
from inferstream.apps.cameras.simulator import FacilitySimulator, SimSettings
from inferstream.bus import open_bus
from inferstream.classify import load_model
from inferstream.envelope import Envelope, now_us
from inferstream.pipeline import load_pipeline
from inferstream.runner import ensure_topics
from inferstream.store import ResultFilter, ResultsStore
from inferstream.testing import pipeline_threads

WINDOW_MS = 1000


def ceiling(sim: FacilitySimulator) -> tuple[float, int]:
    envs = [
        sim.envelope(camera, tick, image, tenant="bench", run="ceiling", epoch_us=0)
        for tick in range(sim.ticks)
        for camera, _, image in sim.frames(tick)
    ]
    aggregate, estimate = AggregateStep(sim.layout), EstimateStep(load_model("camera_view"))
    started = time.monotonic()
    for i in range(0, len(envs), 256):
        images = aggregate.process(envs[i : i + 256])
        estimate.process([image for image in images if isinstance(image, Envelope)])
    return time.monotonic() - started, len(envs)


def pipeline(sim: FacilitySimulator, work: Path) -> tuple[float, int, int]:
    spec = load_pipeline(APP.pipeline_path("cameras")).with_urls(
        bus=f"sqlite:///{work / 'bus.db'}",
        store=f"sqlite:///{work / 'results.db'}",
        blobs=f"file://{work / 'blobs'}",
    )
    bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    epoch_us = now_us() // 1_000_000 * 1_000_000  # about now: no frame is ever late
    emission = sim.emit(bus, tenant="bench", run="pipeline", epoch_us=epoch_us)
    # Event time is ahead of the clock here: the watermark (newest event - 2 s lateness)
    # closes every window but the last three at once; those wait for the clock.
    windows = len(emission.window_starts(WINDOW_MS)) - 3
    store = ResultsStore(spec.store)
    started = time.monotonic()
    with pipeline_threads(spec):
        while store.count_results("bench", ResultFilter(attributes={"flow": "prod"})) < windows:
            time.sleep(0.05)
        seconds = time.monotonic() - started
    store.close()
    bus.close()
    return seconds, len(emission.frames), windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="simulated seconds")
    args = parser.parse_args()
    sim = FacilitySimulator(FacilityLayout(), SimSettings(duration_s=args.seconds, seed=7))
    c_s, c_frames = ceiling(sim)
    with tempfile.TemporaryDirectory() as tmp:
        p_s, p_frames, windows = pipeline(sim, Path(tmp))
    print(
        f"ceiling  (aggregate + estimate steps): {c_frames / c_s:8.0f} frames/s "
        f"({c_frames} in {c_s:.2f}s)"
    )
    print(
        f"pipeline (cameras.yaml, embedded): {p_frames / p_s:8.0f} frames/s, "
        f"{windows / p_s:.1f} states/s ({p_frames} frames, {windows} states in {p_s:.2f}s)"
    )
    print(f"pipeline / ceiling: {(p_frames / p_s) / (c_frames / c_s):.2f}")


if __name__ == "__main__":
    main()
