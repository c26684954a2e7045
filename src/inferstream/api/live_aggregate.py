"""Server-side aggregation behind the live dashboard: scans in, one snapshot out.

Pure logic, no I/O: :class:`TenantWindow` folds the results a tenant stored since the
last tick into a bounded ring of per-second buckets (count, labels, confidence bins,
a log-scale latency histogram), and :func:`build_snapshot` turns the ring plus a few
store/bus readings into the one JSON-ready message a subscriber receives per tick.
However many scans arrive, the browser gets one message a second whose size depends
on the window length, never on the scan rate.

Latency quantiles come from the histogram (20 bins per decade), so p50/p99 are
within about 6 % of the exact value; exact quantiles would mean keeping every
latency of the last five minutes, 300,000 floats per tenant at the flagship's rate.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferstream.application import AppSpec

WINDOW_S = 300
CONFIDENCE_BINS = 10
#: Latency histogram: 20 log-spaced bins per decade from 0.1 ms to 1,000 s.
_BINS_PER_DECADE = 20
_LATENCY_MIN_MS = 0.1
_LATENCY_EDGES_MS = tuple(
    _LATENCY_MIN_MS * 10 ** (i / _BINS_PER_DECADE) for i in range(7 * _BINS_PER_DECADE + 1)
)
US_PER_S = 1_000_000


@dataclass(frozen=True, slots=True)
class View:
    """What the dashboard shows of an application: its first head's labels in the
    declared order, and its summary ratios as (name, label)."""

    labels: tuple[str, ...]
    ratios: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, app: AppSpec) -> View:
        head = app.first_head
        if head is None:  # it predicts nothing: no labels, no ratios
            return cls(())
        ratios = tuple((r.name, r.label) for r in app.ratios if r.head == head.name)
        return cls(head.label_names, ratios)


def describe_app(app: AppSpec) -> dict[str, Any]:
    """The declaration as the page needs it: names, nouns, labels with colours, ratios,
    panels, and the application's own views with the URL each is read from."""
    head = app.first_head
    labels = head.labels if head else ()
    shown = {label.name: label.shown for label in labels}
    return {
        "name": app.name,
        "title": app.title,
        "subject": app.subject,
        "group_noun": app.group_noun,
        "head": head.name if head else "",
        "labels": [
            {"name": label.name, "title": label.shown, "colour": label.colour} for label in labels
        ],
        "ratios": [
            {"name": ratio.name, "title": f"{shown.get(ratio.label, ratio.label)} ratio"}
            for ratio in app.ratios
            if head and ratio.head == head.name
        ],
        "panels": list(app.dashboard_panels),
        "views": [
            {
                "title": view.title,
                "kind": view.kind,
                "refresh_s": view.refresh_s,
                "url": f"/v1/apps/{app.name}{view.route}",
            }
            for view in app.views
        ],
    }


@dataclass(frozen=True, slots=True)
class ScanPoint:
    """The few columns of a stored result the live view needs."""

    id: str
    stored_at_us: int
    latency_ms: float
    label: str
    confidence: float
    group: str | None = None


def latency_bin(latency_ms: float) -> int:
    """Index of the histogram bin holding ``latency_ms`` (clamped to the ends)."""
    index = bisect_right(_LATENCY_EDGES_MS, latency_ms) - 1
    return min(max(index, 0), len(_LATENCY_EDGES_MS) - 2)


def latency_quantile(bins: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, at the bin's geometric middle."""
    total = sum(bins.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if seen >= rank:
            return math.sqrt(_LATENCY_EDGES_MS[index] * _LATENCY_EDGES_MS[index + 1])
    return _LATENCY_EDGES_MS[-1]


def confidence_bin(confidence: float) -> int:
    return min(max(int(confidence * CONFIDENCE_BINS), 0), CONFIDENCE_BINS - 1)


@dataclass(slots=True)
class SecondBucket:
    """Everything the dashboard shows about the scans stored in one second."""

    second: int
    count: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    confidence: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    latency: Counter[int] = field(default_factory=Counter)

    def add(self, point: ScanPoint) -> None:
        self.count += 1
        self.labels[point.label] += 1
        self.confidence[confidence_bin(point.confidence)] += 1
        self.latency[latency_bin(point.latency_ms)] += 1


@dataclass(frozen=True, slots=True)
class Query:
    """What to ask the store for next: rows stored at or after ``since_us``,
    strictly after ``after`` (stored_at_us, id) when catching up on a truncated read."""

    since_us: int
    after: tuple[int, str] | None


class TenantWindow:
    """The last ``window_s`` seconds of one tenant's results, in per-second buckets.

    Each tick reads rows stored since ``watermark - grace_s``: rows committed late by
    a slow writer still land in their bucket, and the ids seen inside the grace span
    are remembered so the overlap is never counted twice. Memory is bounded by the
    window (buckets) and the grace span (ids), not by the rate.
    """

    def __init__(
        self, now_us: int, *, window_s: int = WINDOW_S, grace_s: float = 2.0, backfill_s: int = 60
    ) -> None:
        self.window_s = window_s
        self.grace_us = int(grace_s * US_PER_S)
        self.watermark_us = now_us - backfill_s * US_PER_S
        self._buckets: deque[SecondBucket] = deque()
        self._seen: dict[str, int] = {}
        self._after: tuple[int, str] | None = None
        self._groups: dict[str, int] = {}

    def next_query(self) -> Query:
        if self._after is not None:
            return Query(self._after[0], self._after)
        return Query(self.watermark_us - self.grace_us, None)

    def add(self, points: Sequence[ScanPoint], *, truncated: bool = False) -> int:
        """Fold one read into the ring; ``truncated`` when the read hit its row limit.

        Returns how many points were new (not already counted).
        """
        added = 0
        for point in points:
            if point.id in self._seen:
                continue
            self._seen[point.id] = point.stored_at_us
            self._bucket(point.stored_at_us // US_PER_S).add(point)
            if point.group is not None:
                newest = max(self._groups.get(point.group, 0), point.stored_at_us)
                self._groups[point.group] = newest
            self.watermark_us = max(self.watermark_us, point.stored_at_us)
            added += 1
        self._after = (points[-1].stored_at_us, points[-1].id) if truncated and points else None
        self._forget_before(self.watermark_us - self.grace_us)
        return added

    def _bucket(self, second: int) -> SecondBucket:
        # Rows arrive nearly in order: search from the newest end.
        for bucket in reversed(self._buckets):
            if bucket.second == second:
                return bucket
            if bucket.second < second:
                break
        bucket = SecondBucket(second)
        self._buckets.append(bucket)
        if len(self._buckets) > 1 and self._buckets[-2].second > second:
            self._buckets = deque(sorted(self._buckets, key=lambda b: b.second))
        return bucket

    def _forget_before(self, cutoff_us: int) -> None:
        if self._seen and min(self._seen.values()) < cutoff_us:
            self._seen = {k: at for k, at in self._seen.items() if at >= cutoff_us}
        oldest = self.watermark_us // US_PER_S - self.window_s
        while self._buckets and self._buckets[0].second <= oldest:
            self._buckets.popleft()

    def buckets(self, now_s: int) -> list[SecondBucket]:
        """Buckets of the window ending at ``now_s`` (exclusive), oldest first."""
        start = now_s - self.window_s
        return [b for b in self._buckets if start <= b.second < now_s]

    def active_groups(self, limit: int = 12) -> list[str]:
        """The ``limit`` groups with the most recent results, sorted by name."""
        newest = sorted(self._groups, key=lambda group: self._groups[group], reverse=True)[:limit]
        self._groups = {group: self._groups[group] for group in newest[: limit * 4]}
        return sorted(newest)


def series(window: TenantWindow, now_s: int) -> dict[str, list[Any]]:
    """Per-second throughput and p50/p99 latency over the window, one point a second.

    The current (still filling) second is left out so the line does not dip at its end.
    """
    by_second = {b.second: b for b in window.buckets(now_s)}
    seconds = range(now_s - window.window_s, now_s)
    buckets = [by_second.get(s) for s in seconds]
    return {
        "t": [s - now_s for s in seconds],
        "throughput": [b.count if b else 0 for b in buckets],
        "p50_ms": [_round(latency_quantile(b.latency, 0.5)) if b else None for b in buckets],
        "p99_ms": [_round(latency_quantile(b.latency, 0.99)) if b else None for b in buckets],
    }


def window_totals(
    window: TenantWindow, now_s: int, view: View, recent_s: int = 10
) -> dict[str, Any]:
    """Totals over the window: scans, recent rate, latency quantiles, label mix, ratios."""
    buckets = window.buckets(now_s)
    latency: Counter[int] = Counter()
    labels: Counter[str] = Counter()
    for bucket in buckets:
        latency.update(bucket.latency)
        labels.update(bucket.labels)
    scans = sum(b.count for b in buckets)
    recent = sum(b.count for b in buckets if b.second >= now_s - recent_s)
    return {
        "window_s": window.window_s,
        "scans": scans,
        "throughput_per_s": round(recent / recent_s, 2),
        "p50_ms": _round(latency_quantile(latency, 0.5)),
        "p99_ms": _round(latency_quantile(latency, 0.99)),
        "labels": {label: labels.get(label, 0) for label in _label_order(labels, view)},
        "ratios": {name: _ratio(labels.get(label, 0), scans) for name, label in view.ratios},
    }


def confidence_histogram(window: TenantWindow, now_s: int) -> dict[str, list[Any]]:
    counts = [0] * CONFIDENCE_BINS
    for bucket in window.buckets(now_s):
        counts = [a + b for a, b in zip(counts, bucket.confidence, strict=True)]
    edges = [round(i / CONFIDENCE_BINS, 2) for i in range(CONFIDENCE_BINS + 1)]
    return {"edges": edges, "counts": counts}


def group_mix(groups: Iterable[tuple[str, str, int]], view: View) -> list[dict[str, Any]]:
    """Per-group prediction mix from (group, label, count) rows, sorted by group."""
    by_group: dict[str, Counter[str]] = {}
    for group, label, count in groups:
        by_group.setdefault(group, Counter())[label] += count
    mix = []
    for group in sorted(by_group):
        counts = by_group[group]
        total = sum(counts.values())
        mix.append(
            {
                "group": group,
                "total": total,
                "counts": {label: counts.get(label, 0) for label in _label_order(counts, view)},
                "ratios": {name: _ratio(counts.get(lb, 0), total) for name, lb in view.ratios},
            }
        )
    return mix


def _label_order(counts: Mapping[str, int], view: View) -> list[str]:
    """The declared labels in their order, then any others alphabetically."""
    return [*view.labels, *sorted(set(counts) - set(view.labels))]


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class RateMeter:
    """Rate of a growing counter (e.g. a group's committed offsets) over the last ``span_s``.

    Averaged over a span rather than between two ticks, so a stage that commits in
    batches reads as a steady rate instead of jumping between zero and a spike.
    """

    def __init__(self, span_s: float = 10.0) -> None:
        self.span_s = span_s
        self._readings: deque[tuple[float, float]] = deque()

    def update(self, at_s: float, value: float) -> float | None:
        if self._readings and value < self._readings[-1][1]:
            self._readings.clear()  # the counter went back (replay): start over
        self._readings.append((at_s, value))
        while len(self._readings) > 2 and at_s - self._readings[1][0] >= self.span_s:
            self._readings.popleft()
        first_s, first = self._readings[0]
        if at_s <= first_s:
            return None
        return (value - first) / (at_s - first_s)


def build_snapshot(
    tenant: str,
    now_us: int,
    window: TenantWindow,
    *,
    app: AppSpec,
    groups: Sequence[Mapping[str, Any]],
    accuracy: Sequence[Mapping[str, Any]],
    stages: Sequence[Mapping[str, Any]],
    newest: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The one message a subscriber of ``tenant`` gets this tick."""
    now_s = now_us // US_PER_S
    return {
        "type": "snapshot",
        "tenant": tenant,
        "at_us": now_us,
        "app": describe_app(app),
        "totals": window_totals(window, now_s, View.of(app)),
        "series": series(window, now_s),
        "confidence": confidence_histogram(window, now_s),
        "groups": list(groups),
        "accuracy": list(accuracy),
        "stages": list(stages),
        "newest": list(newest),
    }
