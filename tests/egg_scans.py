"""The flagship for tests that run it end to end: generated egg scans as DICOM envelopes,
its pipeline file on a test's own URLs, and waiting for its records. At the top of
``tests/`` so that every folder's tests can import it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from flow_testing import wait_for

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.dicomgen import to_dicom_bytes
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.envelope import Envelope, new_envelope
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.store import ResultsStore


def egg_envelopes(
    n: int, seed: int, tenant: str = "farm", images: Sequence[np.ndarray] | None = None
) -> list[Envelope]:
    """``n`` scans as a scanner sends them, keyed by egg id; ``images`` replaces the
    generated eggs' pixels (anything else in an egg's DICOM header)."""
    specs = make_specs(n, seed=seed)
    pixels = render_batch(specs) if images is None else images
    return [
        new_envelope(to_dicom_bytes(image, egg), "application/dicom", tenant=tenant,
                     key=egg.egg_id)
        for egg, image in zip(specs, pixels, strict=True)
    ]  # fmt: skip


def flagship(folder: Path, *, bus: str | None = None, store: str | None = None) -> PipelineSpec:
    """The flagship's pipeline file with its bus, store and blobs in ``folder`` (or at
    the URLs given)."""
    return load_pipeline(APP.pipeline_path()).with_urls(
        bus=bus or f"sqlite:///{folder / 'bus.db'}",
        store=store or f"sqlite:///{folder / 'results.db'}",
        blobs=f"file://{folder / 'blobs'}",
    )


def wait_for_records(store: ResultsStore, tenant: str, count: int, timeout_s: float = 120) -> int:
    """How many records ``tenant`` has once it has ``count`` (or time is up)."""
    wait_for(lambda: store.count_results(tenant) >= count, timeout_s)
    return store.count_results(tenant)
