"""The not-an-egg guard: scans outside the sexing model's domain are flagged and stored
without a sex; eggs almost never are. Rates on generated eggs and on every kind of
generated non-egg, and on public DICOM images of other subjects (files our code did not
write), then through the flagship pipeline end to end."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pytest
from egg_scans import egg_envelopes, flagship, wait_for_records
from flow_testing import produce_envelopes

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.domain import (
    DOMAIN,
    EGG,
    NOT_AN_EGG,
    DomainModel,
    egg_guard_step,
    features,
    generated_eggs,
    load_domain,
    rates,
)
from inferstream.apps.eggs.negatives import KINDS, negatives
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.apps.eggs.preprocess import preprocess_with_extents
from inferstream.bus import open_bus
from inferstream.steps import StepContext
from inferstream.store import ResultsStore
from inferstream.testing import pipeline_threads

FOLDERS = (
    Path(data_store.__file__).parent / "data",
    Path(pydicom.__file__).parent / "data" / "test_files",
)


@functools.cache
def public_images() -> dict[str, np.ndarray]:
    """Every public test image pydicom decodes to one grey slice of 32 x 32 or more (the
    first frame, the first channel), scaled to the 12-bit range our scanners give."""
    found = {}
    for path in sorted(p for folder in FOLDERS for p in folder.rglob("*") if p.is_file()):
        if path.stat().st_size > 64 * 1024 * 1024:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels = np.asarray(pydicom.dcmread(path).pixel_array, dtype=np.float64)
        except Exception:  # most of a test-file collection is not an image pydicom decodes
            continue
        if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
            pixels = pixels[..., 0]
        if pixels.ndim == 3:
            pixels = pixels[0]
        if pixels.ndim != 2 or min(pixels.shape) < 32:
            continue
        pixels -= pixels.min()
        found[path.name] = (pixels / max(pixels.max(), 1.0) * 4000).astype(np.uint16)
    return found


@pytest.fixture(scope="module")
def guard() -> DomainModel:
    return load_domain()


def flagged(guard: DomainModel, scans: list[np.ndarray]) -> np.ndarray:
    inputs, extents = preprocess_with_extents(scans)
    return ~guard.is_egg(guard.scores(inputs), extents)


@pytest.mark.parametrize("count", [1, 3, 64])
def test_the_features_are_each_input_averaged_over_blocks_of_four(count: int) -> None:
    inputs = np.random.default_rng(count).standard_normal((count, 1, 64, 64)).astype(np.float32)
    blocks = inputs.reshape(count, 16, 4, 16, 4).astype(np.float64).mean(axis=(2, 4))
    found = features(inputs)
    assert found.shape == (count, 256)
    np.testing.assert_allclose(found, blocks.reshape(count, 256), rtol=0, atol=1e-6)


def test_the_guard_flags_every_kind_of_non_egg_and_almost_no_egg(guard: DomainModel) -> None:
    """Targets: at least 99% of each kind of non-egg, at most 0.5% of eggs."""
    found = rates(guard, 120, seed=11)
    assert set(found) == {"eggs", *KINDS}
    assert {kind: share for kind, share in found.items() if kind != "eggs" and share < 0.99} == {}
    eggs = flagged(guard, generated_eggs(900, seed=12))
    assert eggs.mean() <= 0.005, f"{eggs.sum()} of {len(eggs)} eggs flagged"


def test_public_images_of_other_subjects_are_all_flagged(guard: DomainModel) -> None:
    images = public_images()
    assert len(images) >= 80  # MR heads, CT, ultrasound, X-ray, secondary captures
    marked = flagged(guard, list(images.values()))
    assert [name for name, flag in zip(images, marked, strict=True) if not flag] == []


def test_the_shipped_guard_records_its_rates() -> None:
    import json

    meta = json.loads((APP.models_dir / "egg_domain.json").read_text())
    assert meta["rates_flagged"]["eggs"] <= 0.005
    assert min(share for kind, share in meta["rates_flagged"].items() if kind != "eggs") >= 0.99


def test_the_step_marks_scans_and_takes_the_input_from_non_eggs() -> None:
    from inferstream.apps.eggs.dicom import decode_dicom_step
    from inferstream.apps.eggs.preprocess import preprocess_step

    context = StepContext(pipeline="eggs", stage="classify", app=APP)
    eggs = render_batch(make_specs(3, seed=21))
    scans = [*eggs, *negatives("other anatomy (head-like)", 2, seed=21)]
    envelopes = egg_envelopes(5, seed=21, images=scans)
    for step in (decode_dicom_step(context), preprocess_step(context), egg_guard_step(context)):
        envelopes = step.process(envelopes)  # type: ignore[assignment]
    assert [env.attributes[DOMAIN] for env in envelopes] == [EGG] * 3 + [NOT_AN_EGG] * 2
    assert [env.payload.WhichOneof("body") for env in envelopes] == ["tensor"] * 3 + [None] * 2
    assert all(float(env.attributes["domain_score"]) > 0 for env in envelopes)


def test_non_eggs_go_through_the_pipeline_stored_as_such_without_a_sex(tmp_path: Path) -> None:
    """A head MR slice, a phantom and noise sent as scans among eggs: every scan is one
    record (counted by id); the three are domain not_an_egg with no prediction, so no
    sex ratio counts them; the eggs are sexed."""
    spec = flagship(tmp_path)
    head = public_images()["MR_small.dcm"]
    others = [head, *negatives("ring phantom", 1, 31), *negatives("noise", 1, 31)]
    scans = [*render_batch(make_specs(20, seed=31)), *others]
    envelopes = egg_envelopes(23, seed=31, images=scans)
    bus, store = open_bus(spec.bus), ResultsStore(spec.store)
    try:
        with pipeline_threads(spec, replicas=1):
            produce_envelopes(bus, "scans.raw", envelopes)
            wait_for_records(store, "farm", len(envelopes))
        records = {r.root_id: r for r in store.list_results("farm", limit=100).items}
    finally:
        bus.close()
        store.close()
    assert set(records) == {e.id for e in envelopes}
    not_eggs = {e.id for e in envelopes[20:]}
    for root, record in records.items():
        if root in not_eggs:
            assert record.attributes[DOMAIN] == NOT_AN_EGG and not record.label, record
        else:
            assert record.attributes[DOMAIN] == EGG and record.label, record
