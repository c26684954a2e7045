"""Readings the live dashboard takes each tick: store queries, bus lag, worker errors.

The store's own methods cover most of it (the newest records, through the sharing
grants; accuracy); the few queries it lacks (results stored since a time, the label mix
of several groups, dead letters per stage) are built here on the store's engine and
``schema`` tables, always filtered by tenant and, on PostgreSQL, run after setting
``inferstream.tenant`` like the store does, so row-level security backs the WHERE clause
up. The window's figures (throughput, latency, label and group mix, dead letters) are the
tenant's own records only: they describe its pipeline; records shared with it appear in
the newest table. Everything here is blocking; the hub runs it in a thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from sqlalchemy import Connection, and_, func, select
from sqlalchemy import tuple_ as sql_tuple

from inferstream.api.live_aggregate import (
    US_PER_S,
    RateMeter,
    ScanPoint,
    TenantWindow,
    View,
    build_snapshot,
    group_mix,
)
from inferstream.application import AppSpec
from inferstream.bus import Bus
from inferstream.envelope import now_us
from inferstream.errors import BusError
from inferstream.pipeline import PipelineSpec
from inferstream.store import ResultFilter, ResultsStore
from inferstream.store.schema import dead_letters, records
from inferstream.store.sharing import Sharing

#: Most rows one tick reads; a backlog is caught up over the following ticks.
MAX_ROWS_PER_TICK = 20_000
NEWEST = 20
#: Accuracy joins every result with feedback: refresh it less often than each tick.
ACCURACY_EVERY_S = 10.0


def tenant_connection(store: ResultsStore, tenant: str) -> AbstractContextManager[Connection]:
    """A transaction scoped to ``tenant``, through the store (row-level security)."""
    return store.tenant_transaction(tenant, "read the live dashboard's figures from")


def fetch_points(
    conn: Connection,
    tenant: str,
    since_us: int,
    after: tuple[int, str] | None,
    *,
    limit: int = MAX_ROWS_PER_TICK,
    app: str | None = None,
) -> list[ScanPoint]:
    """Records of ``tenant`` (of ``app``) stored at or after ``since_us`` (and after
    ``after``), oldest first."""
    c = records.c
    where = [c.tenant == tenant, c.stored_at_us >= since_us]
    if app is not None:
        where.append(c.app == app)
    if after is not None:
        where.append(sql_tuple(c.stored_at_us, c.id) > after)
    stmt = (
        select(c.id, c.stored_at_us, c.latency_ms, c.label, c.confidence, c.group_key)
        .where(and_(*where))
        .order_by(c.stored_at_us, c.id)
        .limit(limit)
    )
    return [ScanPoint(*row) for row in conn.execute(stmt).all()]


def fetch_group_counts(
    conn: Connection, tenant: str, groups: Sequence[str], app: str | None = None
) -> list[Any]:
    """(group, label, count) over every record (of ``app``) of the given groups."""
    if not groups:
        return []
    c = records.c
    of_app = [c.app == app] if app is not None else []
    stmt = (
        select(c.group_key, c.label, func.count())
        .where(c.tenant == tenant, c.group_key.in_(groups), *of_app)
        .group_by(c.group_key, c.label)
    )
    return [tuple(row) for row in conn.execute(stmt).all()]


def fetch_dead_letter_counts(conn: Connection, tenant: str, recent_since_us: int) -> dict[str, Any]:
    """Per stage: dead letters in total and since ``recent_since_us``."""
    c = dead_letters.c
    stmt = select(c.stage, func.count(), func.max(c.at_us)).where(c.tenant == tenant)
    totals = {row[0]: (int(row[1]), int(row[2])) for row in conn.execute(stmt.group_by(c.stage))}
    recent_stmt = (
        select(c.stage, func.count())
        .where(c.tenant == tenant, c.at_us >= recent_since_us)
        .group_by(c.stage)
    )
    recent_counts = {row[0]: int(row[1]) for row in conn.execute(recent_stmt)}
    return {
        stage: {"total": total, "recent": recent_counts.get(stage, 0), "last_at_us": last}
        for stage, (total, last) in totals.items()
    }


def newest_scans(
    store: ResultsStore, tenant: str, limit: int = NEWEST, app: str | None = None
) -> list[dict[str, Any]]:
    """The newest records (of ``app``) ``tenant`` may read: its own and those a live
    sharing grant covers, read through the grants afresh on every call (a revoked or
    expired grant's records are gone from the next snapshot), shared ones masked and
    marked with their owner (``shared_from``). Each is under the id of the scan it was
    made from (the id the dashboard opens with ``/v1/scans/{id}``; a record's own id,
    ``record_id``, is not a scan's)."""
    found = Sharing(store).list_visible(tenant, ResultFilter(app=app), limit=limit, order="desc")
    return [
        {
            "id": item.row.root_id,
            "record_id": item.row.id,
            "app": item.row.app,
            "shared_from": item.shared_from,
            "subject": item.row.subject,
            "group": item.row.group,
            "label": item.row.label,
            "confidence": round(item.row.confidence, 4),
            "model_name": item.row.model_name,
            "model_version": item.row.model_version,
            "stored_at_us": item.row.stored_at_us,
            "latency_ms": round(item.row.latency_ms, 2),
        }
        for item in found.items
    ]


def failed_attempts(pipeline: str) -> dict[str, float]:
    """Failed processing attempts per stage from the workers' Prometheus counters.

    Under ``inferstream up`` the workers write to ``PROMETHEUS_MULTIPROC_DIR``; in one
    process (tests, embedded runs) the default registry holds them.
    """
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    errors: dict[str, float] = {}
    for family in registry.collect():
        if family.name != "inferstream_messages_failed":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("pipeline") == pipeline:
                stage = sample.labels.get("stage", "")
                errors[stage] = errors.get(stage, 0.0) + sample.value
    return errors


@dataclass
class StageMeters:
    """Pipeline-wide bus readings per stage (topics are shared by every tenant)."""

    pipeline: PipelineSpec
    bus: Bus | None
    rates: dict[str, RateMeter] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)

    def read(self) -> dict[str, dict[str, Any]]:
        """Rate (messages/s the group commits), lag and failed attempts of each stage."""
        errors = failed_attempts(self.pipeline.name)
        now = time.monotonic()
        for stage in self.pipeline.stages:
            reading: dict[str, Any] = {"rate_per_s": None, "lag": None}
            if self.bus is not None:
                reading = self._bus_reading(
                    stage.name, stage.inputs, stage.group(self.pipeline.name), now
                )
            reading["errors"] = int(errors.get(stage.name, 0))
            self.last[stage.name] = reading
        return self.last

    def _bus_reading(
        self, name: str, topics: tuple[str, ...], group: str, now: float
    ) -> dict[str, Any]:
        assert self.bus is not None
        try:
            parts = [part for topic in topics for part in self.bus.partitions(topic, group)]
        except BusError:
            return {"rate_per_s": None, "lag": None}
        consumed = sum(p.low if p.committed is None else p.committed for p in parts)
        rate = self.rates.setdefault(name, RateMeter()).update(now, consumed)
        return {
            "rate_per_s": None if rate is None else round(rate, 2),
            "lag": sum(p.lag for p in parts),
        }


def stage_rows(
    pipeline: PipelineSpec | None, meters: dict[str, dict[str, Any]], dead: dict[str, Any]
) -> list[dict[str, Any]]:
    """One health row per stage: pipeline-wide rate/lag/errors, the tenant's dead letters."""
    if pipeline is None:
        return [{"name": stage, "dead_letters": info["total"]} for stage, info in dead.items()]
    rows = []
    for stage in pipeline.stages:
        info = dead.get(stage.name, {"total": 0, "recent": 0})
        rows.append(
            {
                "name": stage.name,
                "input": ", ".join(stage.inputs),
                "group": stage.group(pipeline.name),
                **meters.get(stage.name, {"rate_per_s": None, "lag": None, "errors": 0}),
                "dead_letters": info["total"],
                "dead_letters_recent": info["recent"],
            }
        )
    return rows


@dataclass
class TenantFeed:
    """The per-tenant state of the hub: its window and slowly refreshed readings."""

    tenant: str
    window: TenantWindow
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    accuracy_at: float = float("-inf")


def tenant_snapshot(
    store: ResultsStore,
    feed: TenantFeed,
    pipeline: PipelineSpec | None,
    meters: dict[str, dict[str, Any]],
    app: AppSpec,
) -> dict[str, Any]:
    """Read what is new for one tenant and build its snapshot (blocking)."""
    tenant, window = feed.tenant, feed.window
    now = now_us()
    with tenant_connection(store, tenant) as conn:
        for _ in range(4):  # catch a backlog up a few pages per tick, not unboundedly
            query = window.next_query()
            points = fetch_points(conn, tenant, query.since_us, query.after, app=app.name)
            window.add(points, truncated=len(points) >= MAX_ROWS_PER_TICK)
            if len(points) < MAX_ROWS_PER_TICK:
                break
        counts = fetch_group_counts(conn, tenant, window.active_groups(), app.name)
        groups = group_mix(counts, View.of(app))
        dead = fetch_dead_letter_counts(conn, tenant, now - window.window_s * US_PER_S)
    if time.monotonic() - feed.accuracy_at >= ACCURACY_EVERY_S:
        feed.accuracy = [
            {**vars_of_accuracy(a), "accuracy": round(a.accuracy, 4)}
            for a in store.accuracy_by_model_version(tenant, app.name)
        ]
        feed.accuracy_at = time.monotonic()
    return build_snapshot(
        tenant,
        now,
        window,
        app=app,
        groups=groups,
        accuracy=feed.accuracy,
        stages=stage_rows(pipeline, meters, dead),
        newest=newest_scans(store, tenant, app=app.name),
    )


def vars_of_accuracy(entry: Any) -> dict[str, Any]:
    return {
        "model_name": entry.model_name,
        "model_version": entry.model_version,
        "role": entry.role,
        "labelled": entry.labelled,
        "correct": entry.correct,
    }
