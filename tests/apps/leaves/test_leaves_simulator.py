"""The drone simulator: deterministic from its seed, and its truth is consistent."""

from __future__ import annotations

import numpy as np

from inferstream.apps.leaves.simulator import (
    DISEASES,
    GRADES,
    HEIGHT,
    MAX_LEAVES,
    WIDTH,
    decode_png,
    encode_png,
    simulate,
)  # fmt: skip


def test_the_same_seed_gives_the_same_photos_and_another_does_not() -> None:
    first, again = list(simulate(3, 2, seed=5)), list(simulate(3, 2, seed=5))
    assert all(np.array_equal(a.image, b.image) and a.leaves == b.leaves
               for a, b in zip(first, again, strict=True))  # fmt: skip
    other = list(simulate(3, 2, seed=6))
    assert not np.array_equal(first[0].image, other[0].image)


def test_the_truth_describes_each_photo() -> None:
    photos = list(simulate(4, 3, seed=0, tenant="farm-a"))
    assert len(photos) == 12
    for photo in photos:
        assert photo.image.shape == (HEIGHT, WIDTH, 3) and photo.image.dtype == np.uint8
        assert 1 <= len(photo.leaves) <= MAX_LEAVES
        assert photo.blob_path == f"farm-a/{photo.position_id}/{photo.date}/image.png"
        for leaf in photo.leaves:
            x0, y0, x1, y1 = leaf.box
            assert 0 <= x0 < x1 <= WIDTH and 0 <= y0 < y1 <= HEIGHT
            assert photo.mask[y0:y1, x0:x1].any()
            assert set(leaf.grades) == set(DISEASES)
            assert all(0 <= g < GRADES for g in leaf.grades.values())
    # A position keeps its leaves (same places) from day to day; only the spots change.
    p0 = [p for p in photos if p.position_id == "P000"]
    assert [leaf.box for leaf in p0[0].leaves] == [leaf.box for leaf in p0[1].leaves]
    assert np.array_equal(decode_png(encode_png(photos[0].image)), photos[0].image)


def test_treated_leaves_heal_and_control_leaves_worsen() -> None:
    photos = list(simulate(20, 5, seed=3))
    change = {"control": [], "treated": []}  # type: dict[str, list[float]]
    for area in change:
        days = [
            [
                np.mean([list(leaf.grades.values()) for leaf in p.leaves])
                for p in photos
                if p.area == area and p.date == d
            ]
            for d in sorted({p.date for p in photos})
        ]
        change[area] = [float(np.mean(d)) for d in days]
    assert change["treated"][-1] < change["treated"][0]
    assert change["control"][-1] > change["control"][0]
