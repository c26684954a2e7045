"""Unit tests of the live dashboard's aggregation (pure logic, no I/O)."""

from __future__ import annotations

import json

import pytest

from inferstream.api.live_aggregate import (
    US_PER_S,
    RateMeter,
    ScanPoint,
    TenantWindow,
    View,
    build_snapshot,
    confidence_histogram,
    group_mix,
    latency_bin,
    latency_quantile,
    series,
    window_totals,
)
from inferstream.apps.eggs import APP

NOW_S = 1_800_000_000


EGGS = View.of(APP)


def point(
    n: int,
    second: int,
    *,
    latency: float = 10.0,
    label: str = "female",
    confidence: float = 0.9,
    group: str | None = "TRAY-1",
) -> ScanPoint:
    at = second * US_PER_S + n % US_PER_S
    return ScanPoint(f"scan-{n}", at, latency, label, confidence, group)


def test_points_land_in_their_second_and_redelivered_rows_count_once() -> None:
    window = TenantWindow(NOW_S * US_PER_S, window_s=60)
    first = [point(i, NOW_S - 3) for i in range(5)] + [point(10 + i, NOW_S - 2) for i in range(2)]
    assert window.add(first) == 7
    # The next read overlaps the grace span: the same rows come back with one new one.
    assert window.add([*first[-3:], point(99, NOW_S - 1)]) == 1
    data = series(window, NOW_S)
    assert len(data["t"]) == 60
    assert data["t"][-1] == -1
    assert data["throughput"][-3:] == [5, 2, 1]
    assert sum(data["throughput"]) == 8


def test_next_query_reaches_back_by_the_grace_span() -> None:
    window = TenantWindow(NOW_S * US_PER_S, grace_s=2.0, backfill_s=30)
    assert window.next_query().since_us == (NOW_S - 32) * US_PER_S
    window.add([point(1, NOW_S)])
    query = window.next_query()
    assert query.since_us == NOW_S * US_PER_S + 1 - 2 * US_PER_S
    assert query.after is None


def test_truncated_read_continues_after_the_last_row() -> None:
    window = TenantWindow(NOW_S * US_PER_S)
    rows = [point(i, NOW_S - 1) for i in range(3)]
    window.add(rows, truncated=True)
    query = window.next_query()
    assert query.after == (rows[-1].stored_at_us, rows[-1].id)
    window.add([point(7, NOW_S - 1)], truncated=False)
    assert window.next_query().after is None


def test_ring_keeps_only_the_window() -> None:
    window = TenantWindow(0, window_s=30, grace_s=1.0)
    for second in range(NOW_S - 500, NOW_S):
        window.add([point(second, second)])
    kept = window.buckets(NOW_S)
    assert len(kept) == 30
    assert kept[0].second == NOW_S - 30
    assert sum(series(window, NOW_S)["throughput"]) == 30


def test_late_row_for_an_older_second_keeps_buckets_ordered() -> None:
    window = TenantWindow(NOW_S * US_PER_S, window_s=10)
    window.add([point(1, NOW_S - 2)])
    window.add([point(2, NOW_S - 4), point(3, NOW_S - 2)])
    seconds = [b.second for b in window.buckets(NOW_S)]
    assert seconds == sorted(seconds) == [NOW_S - 4, NOW_S - 2]
    assert series(window, NOW_S)["throughput"][-4:] == [1, 0, 2, 0]


@pytest.mark.parametrize(("q", "exact"), [(0.5, 500.0), (0.99, 990.0)])
def test_latency_quantiles_are_within_the_histogram_resolution(q: float, exact: float) -> None:
    window = TenantWindow(NOW_S * US_PER_S)
    window.add([point(i, NOW_S - 1, latency=float(i)) for i in range(1, 1001)])
    totals = window_totals(window, NOW_S, EGGS)
    estimate = totals["p50_ms" if q == 0.5 else "p99_ms"]
    # 20 bins per decade: a bin spans 12 %, its middle is within 6 % of any value in it.
    assert estimate == pytest.approx(exact, rel=0.07)


def test_latency_histogram_clamps_extremes() -> None:
    assert latency_bin(0.0) == 0
    assert latency_bin(1e12) == latency_bin(1e9)
    assert latency_quantile({}, 0.5) is None


def test_totals_give_label_mix_declared_ratio_and_recent_rate() -> None:
    window = TenantWindow(NOW_S * US_PER_S)
    labels = ["female"] * 6 + ["male"] * 3 + ["not_developing"]
    window.add([point(i, NOW_S - 1 - i, label=label) for i, label in enumerate(labels)])
    window.add([point(100, NOW_S - 60, label="male")])
    totals = window_totals(window, NOW_S, EGGS, recent_s=10)
    assert totals["scans"] == 11
    assert totals["labels"] == {"female": 6, "male": 4, "not_developing": 1}
    assert totals["ratios"]["female_ratio"] == pytest.approx(6 / 11, abs=1e-4)
    assert totals["throughput_per_s"] == 1.0  # 10 scans in the last 10 s


def test_confidence_histogram_has_ten_bins_and_puts_one_in_the_last() -> None:
    window = TenantWindow(NOW_S * US_PER_S)
    confidences = [0.05, 0.34, 0.35, 0.99, 1.0, 1.0]
    window.add([point(i, NOW_S - 1, confidence=c) for i, c in enumerate(confidences)])
    histogram = confidence_histogram(window, NOW_S)
    assert histogram["edges"][0] == 0.0
    assert histogram["edges"][-1] == 1.0
    assert histogram["counts"] == [1, 0, 0, 2, 0, 0, 0, 0, 0, 3]


def test_active_groups_are_the_most_recent_sorted_by_name() -> None:
    window = TenantWindow(NOW_S * US_PER_S)
    window.add([point(i, NOW_S - 20 + i, group=f"TRAY-{i:02d}") for i in range(20)])
    assert window.active_groups(limit=3) == ["TRAY-17", "TRAY-18", "TRAY-19"]


def test_group_mix_folds_groups_in_the_declared_label_order() -> None:
    mix = group_mix(
        [("T2", "male", 3), ("T1", "female", 2), ("T1", "not_developing", 2), ("T2", "odd", 1)],
        EGGS,
    )
    assert [group["group"] for group in mix] == ["T1", "T2"]
    assert mix[0]["counts"] == {"female": 2, "male": 0, "not_developing": 2}
    assert mix[0]["ratios"] == {"female_ratio": 0.5}
    assert list(mix[1]["counts"]) == ["female", "male", "not_developing", "odd"]
    assert mix[1]["total"] == 4


def test_rate_meter_averages_over_its_span() -> None:
    meter = RateMeter(span_s=10)
    assert meter.update(0.0, 100) is None
    assert meter.update(2.0, 300) == 100.0
    assert meter.update(4.0, 300) == 50.0  # nothing new for 2 s: the average halves
    for second in range(5, 30):
        rate = meter.update(float(second), 300 + (second - 4) * 20)
    assert rate == 20.0  # older readings left the span


def test_rate_meter_starts_over_when_the_counter_goes_back() -> None:
    meter = RateMeter()
    meter.update(0.0, 500)
    assert meter.update(1.0, 10) is None  # a replay moved the offsets back
    assert meter.update(2.0, 30) == 20.0


def test_snapshot_is_json_and_its_size_does_not_grow_with_the_scan_rate() -> None:
    sizes = []
    for per_second in (1, 200):
        window = TenantWindow(NOW_S * US_PER_S)
        points = [
            point(s * 1000 + i, s, latency=5 + i % 50, confidence=(i % 10) / 10)
            for s in range(NOW_S - 300, NOW_S)
            for i in range(per_second)
        ]
        window.add(points)
        snapshot = build_snapshot(
            "acme", NOW_S * US_PER_S, window, app=APP, groups=[], accuracy=[], stages=[],
            newest=[],
        )  # fmt: skip
        assert snapshot["tenant"] == "acme"
        assert [label["colour"] for label in snapshot["app"]["labels"]] == [
            label.colour for label in APP.heads[0].labels
        ]
        assert snapshot["app"]["ratios"] == [{"name": "female_ratio", "title": "Female ratio"}]
        assert snapshot["totals"]["scans"] == 300 * per_second
        sizes.append(len(json.dumps(snapshot)))
    # Only digits of the counts change: the message stays the same order of size.
    assert sizes[1] < sizes[0] * 1.5
