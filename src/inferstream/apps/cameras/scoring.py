"""Facility states against the simulator's truth, and the dev flow against production.

A state record is read back from the store (its ``state`` attribute, the fused JSON);
its truth is the scene at the window's last frame tick. A track is right when its
occupancy is, and each end the truth shows on the track is estimated within
``tolerance_m`` (an end the truth does not show must not be estimated either). A state
is exact when every track is right.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from inferstream.apps.cameras.scene import TrackTruth
from inferstream.apps.cameras.simulator import Emission, FacilitySimulator
from inferstream.store import ResultFilter, ResultRow, ResultsStore

TOLERANCE_M = 3.0
State = Mapping[str, Any]  # a fused state as JSON (FacilityState.to_json)


@dataclass(frozen=True)
class StateScore:
    windows_expected: int
    states_stored: int
    lost: int
    doubled: int
    unexpected: int  # states of windows no frame was sent in
    exact: int
    accuracy: float  # exact states / stored states
    accuracy_complete: float  # the same, over states with every camera heard
    degraded: int
    end_error_mean_m: float


def _end_ok(
    estimated: float | None, true: float | None, tolerance_m: float
) -> tuple[bool, float | None]:
    if true is None or estimated is None:
        return true is None and estimated is None, None
    error = abs(estimated - true)
    return error <= tolerance_m, error


def track_errors(
    track: Mapping[str, Any], truth: TrackTruth, tolerance_m: float
) -> tuple[bool, list[float]]:
    """Whether a fused track matches its truth, and the errors of the ends both show."""
    if bool(track["occupied"]) != (truth.loco is not None):
        return False, []
    right, errors = True, []
    for estimated, true in ((track["head_m"], truth.head_m), (track["tail_m"], truth.tail_m)):
        ok, error = _end_ok(estimated, true, tolerance_m)
        right &= ok
        errors += [error] if error is not None else []
    return right, errors


def window_truth(
    sim: FacilitySimulator, emission: Emission, start_us: int, size_ms: int
) -> list[TrackTruth]:
    """The scene at the last frame tick of the window starting at ``start_us``."""
    interval_us = sim.settings.frame_interval_ms * 1000
    last_us = start_us + size_ms * 1000 - 1 - emission.epoch_us
    return sim.track_truth((last_us // interval_us) * interval_us / 1e6)


def read_rows(store: ResultsStore, tenant: str, flow: str) -> list[ResultRow]:
    """Every stored record of ``flow`` (prod, dev, types), page by page."""
    found: list[ResultRow] = []
    cursor: str | None = None
    filters = ResultFilter(app="cameras", attributes={"flow": flow})
    while True:
        page = store.list_results(tenant, filters, cursor=cursor, limit=1000)
        found += page.items
        cursor = page.next_cursor
        if cursor is None:
            return found


def read_states(store: ResultsStore, tenant: str, flow: str) -> list[tuple[int, State]]:
    """Every stored state of ``flow``: (window start, state), one per stored record."""
    return [
        (int(row.attributes["window_start_us"]), json.loads(row.attributes["state"]))
        for row in read_rows(store, tenant, flow)
    ]


def score_states(
    states: Iterable[tuple[int, State]],
    sim: FacilitySimulator,
    emission: Emission,
    size_ms: int,
    tolerance_m: float = TOLERANCE_M,
) -> StateScore:
    states = list(states)
    counts = Counter(start for start, _ in states)
    expected = emission.window_starts(size_ms)
    exact = exact_complete = complete = degraded = 0
    errors: list[float] = []
    for start, state in {start: state for start, state in states}.items():
        if start not in expected:
            continue
        truth = window_truth(sim, emission, start, size_ms)
        results = [track_errors(t, truth[t["track"]], tolerance_m) for t in state["tracks"]]
        right = all(ok for ok, _ in results)
        errors += [e for _, errs in results for e in errs]
        exact += right
        if state["degraded"]:
            degraded += 1
        else:
            complete += 1
            exact_complete += right
    stored = len(counts.keys() & expected)
    return StateScore(
        windows_expected=len(expected),
        states_stored=stored,
        lost=len(expected - counts.keys()),
        doubled=sum(n - 1 for n in counts.values()),
        unexpected=len(counts.keys() - expected),
        exact=exact,
        accuracy=exact / stored if stored else float("nan"),
        accuracy_complete=exact_complete / complete if complete else float("nan"),
        degraded=degraded,
        end_error_mean_m=sum(errors) / len(errors) if errors else float("nan"),
    )


@dataclass(frozen=True)
class FlowAgreement:
    windows: int  # windows both flows stored a state for
    agree: int  # states the two flows agree on, track by track (ends within tolerance)
    rate: float
    only_in_prod: int
    only_in_dev: int


def _tracks_agree(a: State, b: State, tolerance_m: float) -> bool:
    for x, y in zip(a["tracks"], b["tracks"], strict=True):
        if x["occupied"] != y["occupied"]:
            return False
        for end in ("head_m", "tail_m"):
            if (x[end] is None) != (y[end] is None):
                return False
            if x[end] is not None and abs(x[end] - y[end]) > tolerance_m:
                return False
    return True


def compare_flows(
    prod: Iterable[tuple[int, State]],
    dev: Iterable[tuple[int, State]],
    tolerance_m: float = TOLERANCE_M,
) -> FlowAgreement:
    """Window by window: do the production and dev flows put the same locomotives where?"""
    p, d = dict(prod), dict(dev)
    both = p.keys() & d.keys()
    agree = sum(_tracks_agree(p[w], d[w], tolerance_m) for w in both)
    return FlowAgreement(
        len(both),
        agree,
        agree / len(both) if both else float("nan"),
        len(p.keys() - d.keys()),
        len(d.keys() - p.keys()),
    )


__all__ = [
    "FlowAgreement",
    "StateScore",
    "compare_flows",
    "read_rows",
    "read_states",
    "score_states",
    "track_errors",
    "window_truth",
]
