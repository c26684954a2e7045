"""Reading the trial from the records: mean grade per day, area and disease, its trend
(does the treatment heal faster?), and the diff between two versions of a grader.

Pure functions over stored rows, so the example, a test and an API route can share
them; :func:`trial_analysis` caches its answer per tenant for a short time, since a
dashboard asks the same question every few seconds.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from inferstream.apps.leaves.simulator import AREAS, DISEASES
from inferstream.store import ResultsStore
from inferstream.store.rows import PredictionRow, ResultRow

CACHE_S = 5.0


@dataclass(frozen=True)
class Cell:
    date: str
    area: str
    disease: str
    mean_grade: float
    leaves: int


def mean_grades(grades: Iterable[ResultRow]) -> list[Cell]:
    """Mean predicted grade per (date, area, disease), sorted."""
    sums: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for row in grades:
        a = row.attributes
        sums[(str(a["date"]), str(a["area"]), str(a["disease_type"]))].append(int(row.label))
    return [
        Cell(date, area, disease, sum(v) / len(v), len(v))
        for (date, area, disease), v in sorted(sums.items())
    ]


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x)."""
    if len({x for x, _ in points}) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    num = sum((x - mx) * (y - my) for x, y in points)
    return num / sum((x - mx) ** 2 for x, _ in points)


def trends(cells: Sequence[Cell]) -> dict[str, dict[str, float]]:
    """Per disease, the mean grade's change per day in each area, and whether the
    treated area's falls faster (a lower slope) than the control's."""
    days = sorted({c.date for c in cells})
    out: dict[str, dict[str, Any]] = {}
    for disease in DISEASES:
        per_area = {
            area: slope([(days.index(c.date), c.mean_grade) for c in cells
                         if c.disease == disease and c.area == area])
            for area in AREAS
        }  # fmt: skip
        out[disease] = {
            **per_area,
            "treated_heals_faster": per_area["treated"] < per_area["control"],
        }
    return out


def trend_lines(cells: Sequence[Cell]) -> dict[str, Any]:
    """The mean grade per day as a dashboard ``lines`` view: one series per disease and
    area, in the simulator's order (rust control, rust treated, mildew control, ...)."""
    series = [
        {"name": f"{disease}, {area}",
         "points": [[c.date, round(c.mean_grade, 3)] for c in cells
                    if c.disease == disease and c.area == area]}
        for disease in DISEASES
        for area in AREAS
    ]  # fmt: skip
    return {
        "series": [one for one in series if one["points"]],
        "x_label": "Day",
        "y_label": "Mean grade (0 healthy - 4 severe)",
    }


def analysis(grades: Iterable[ResultRow]) -> dict[str, Any]:
    cells = mean_grades(grades)
    return {"cells": [c.__dict__ for c in cells], "trends": trends(cells)}


_CACHE: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}


def trial_analysis(store: ResultsStore, tenant: str) -> dict[str, Any]:
    """:func:`analysis` of a tenant's grade records, cached for :data:`CACHE_S`."""
    from inferstream.apps.leaves.field import read_records

    key = (store.url, tenant)
    hit = _CACHE.get(key)
    if hit is not None and time.monotonic() - hit[0] < CACHE_S:
        return hit[1]
    answer = analysis(read_records(store, tenant, "grade"))
    _CACHE[key] = (time.monotonic(), answer)
    return answer


@dataclass(frozen=True)
class VersionDiff:
    disease: str
    old: str
    new: str
    compared: int
    changed: int
    changes: dict[str, tuple[str, str]]  # leaf id -> (old grade, new grade)


def version_diff(store: ResultsStore, tenant: str, disease: str, old: str, new: str) -> VersionDiff:
    """Compare, crop by crop, the grades two versions of ``disease``'s grader gave."""
    from inferstream.apps.leaves.field import read_records

    rows = [r for r in read_records(store, tenant, "grade")
            if r.attributes.get("disease_type") == disease]  # fmt: skip
    changes, compared = {}, 0
    for row in rows:
        by_version = _labels(store.list_predictions(tenant, row.id), f"leaf_{disease}")
        if old in by_version and new in by_version:
            compared += 1
            if by_version[old] != by_version[new]:
                changes[str(row.subject)] = (by_version[old], by_version[new])
    return VersionDiff(disease, old, new, compared, len(changes), changes)


def _labels(predictions: Iterable[PredictionRow], model: str) -> dict[str, str]:
    return {p.model_version: p.label for p in predictions if p.model_name == model}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m inferstream.apps.leaves.analysis STORE TENANT rust 1.0.0 2.0.0``: the
    diff between two versions of a grader, after a replay."""
    import argparse

    parser = argparse.ArgumentParser(description="Grades that changed between two versions.")
    parser.add_argument("store", help="results store URL")
    parser.add_argument("tenant")
    parser.add_argument("disease", choices=DISEASES)
    parser.add_argument("old", help="old model version, e.g. 1.0.0")
    parser.add_argument("new", help="new model version, e.g. 2.0.0")
    args = parser.parse_args(argv)
    with ResultsStore(args.store) as store:
        diff = version_diff(store, args.tenant, args.disease, args.old, args.new)
    print(f"{diff.disease}: {diff.compared} leaves graded by both {diff.old} and {diff.new}, "
          f"{diff.changed} changed")  # fmt: skip
    for leaf, (before, after) in sorted(diff.changes.items()):
        print(f"  {leaf}: {before} -> {after}")


if __name__ == "__main__":
    main()
