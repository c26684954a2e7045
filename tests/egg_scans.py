"""The flagship for tests that run it end to end: generated egg scans as DICOM envelopes,
its pipeline file on a test's own URLs, and waiting for its records. At the top of
``tests/`` so that every folder's tests can import it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from flow_testing import wait_for

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.dicomgen import to_dicom_bytes
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.envelope import Envelope, new_envelope
from inferstream.pipeline import PipelineSpec, StageSpec, StepSpec, load_pipeline
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


def flagship_behind_ingest(folder: Path, bus: str, *, store: str | None = None) -> PipelineSpec:
    """The flagship with an ingest stage in front, as a centre fed by edge agents over
    the bus runs it: scans.edge -> ``check_ingest`` -> scans.raw, refusals stored."""
    spec = flagship(folder, bus=bus, store=store)
    ingest = StageSpec(name="ingest", input="scans.edge", output="scans.raw",
                       steps=(StepSpec("check_ingest"),))  # fmt: skip
    refused = StageSpec(name="ingest-dead-letters", input="scans.edge.dlq",
                        steps=(StepSpec("store_results"),))  # fmt: skip
    return dataclasses.replace(
        spec, stages=(ingest, refused, *spec.stages), topics={"scans.edge": 2, **spec.topics}
    )


def drop_scans(inbox: Path, scans: Sequence[Envelope], prefix: str = "scan") -> None:
    """Write each scan's DICOM into ``inbox`` as a scanner does: whole files, renamed in."""
    inbox.mkdir(exist_ok=True)
    for i, scan in enumerate(scans):
        (inbox / f".{prefix}-{i}.part").write_bytes(scan.payload.inline)
        os.replace(inbox / f".{prefix}-{i}.part", inbox / f"{prefix}-{i}.dcm")


def wait_for_records(store: ResultsStore, tenant: str, count: int, timeout_s: float = 120) -> int:
    """How many records ``tenant`` has once it has ``count`` (or time is up)."""
    wait_for(lambda: store.count_results(tenant) >= count, timeout_s)
    return store.count_results(tenant)
