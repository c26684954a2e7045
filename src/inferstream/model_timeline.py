"""A model's versions over time, for people: how each version (acting or shadow) has
done, bucket by bucket, and what changed when.

For every version and role of a model, per time bucket of the predictions' times: how
many inputs it scored, its mean confidence (what a calibrated model's accuracy would be:
the estimate before labels arrive, and a drift signal), and once labels have arrived
its accuracy against them. The events are the registry's: alias moves, promotions,
rollbacks and demotions (from the audit trail) and each worker's switch, each with the
bucket it falls in. The dashboard's
Models card draws it; ``GET /v1/registry/models/{name}/timeline`` serves it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, select

from inferstream.registry import ModelRegistry
from inferstream.store.schema import feedback, predictions, records

#: Audit actions drawn on the timeline (decisions to keep or wait are in the table).
EVENT_ACTIONS = ("alias", "promote", "rollback", "demote")


def iso(at_us: int) -> str:
    return datetime.fromtimestamp(at_us / 1e6, UTC).isoformat(timespec="seconds")


def timeline(
    registry: ModelRegistry,
    tenant: str,
    *,
    app: str,
    head: str,
    name: str,
    since_us: int,
    points: int = 60,
) -> dict[str, Any]:
    """``name``'s versions on ``tenant``'s records since ``since_us``, in about
    ``points`` buckets (never shorter than a second)."""
    p, r, f = predictions.c, records.c, feedback.c
    scope = and_(
        p.tenant == tenant, p.head == head, p.model_name == name, p.predicted_at_us >= since_us
    )
    joined = predictions.join(records, and_(r.tenant == p.tenant, r.id == p.record_id))
    with registry.store.tenant_transaction(tenant, "read the model timeline in") as conn:
        first, last = conn.execute(
            select(func.min(p.predicted_at_us), func.max(p.predicted_at_us))
            .select_from(joined)
            .where(scope, r.app == app)
        ).one()
        span_s = ((last or 0) - (first or 0) + 1) / 1e6
        bucket_us = max(1, math.ceil(span_s / max(points, 1))) * 1_000_000  # whole seconds
        bucket = (p.predicted_at_us // bucket_us).label("bucket")
        rows = conn.execute(
            select(
                p.model_version,
                p.role,
                bucket,
                func.count(),
                func.avg(p.confidence),
                func.count(f.label),
                func.sum(case((f.label == p.label, 1), else_=0)),
            )
            .select_from(
                joined.outerjoin(
                    feedback,
                    and_(
                        f.tenant == r.tenant,
                        f.app == r.app,
                        f.subject == r.subject,
                        f.head == p.head,
                    ),
                )
            )
            .where(scope, r.app == app)
            .group_by(p.model_version, p.role, bucket)
            .order_by(bucket, p.model_version, p.role)
        ).all()
    buckets = [
        {
            "at_us": int(b) * bucket_us,
            "version": version,
            "role": role,
            "scored": int(n),
            "mean_confidence": round(float(conf), 4),
            "labelled": int(labelled),
            "accuracy": round(int(right or 0) / int(labelled), 4) if labelled else None,
        }
        for version, role, b, n, conf, labelled, right in rows
    ]
    return {
        "name": name,
        "head": head,
        "bucket_s": bucket_us / 1e6,
        "x_label": "time (UTC), bucket start",
        "y_label": "accuracy (solid) and mean confidence (dashed)",
        "series": _series(buckets),
        "buckets": buckets,
        "events": [
            {**e, "bucket": iso(e["at_us"] // bucket_us * bucket_us)}
            for e in _events(registry, tenant, name, since_us)
        ],
    }


def _series(buckets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy and mean confidence of each version and role, as lines."""
    lines: dict[tuple[str, str, str], list[list[Any]]] = {}
    for b in buckets:
        at = iso(b["at_us"])
        if b["accuracy"] is not None:
            lines.setdefault((b["version"], b["role"], "accuracy"), []).append([at, b["accuracy"]])
        lines.setdefault((b["version"], b["role"], "confidence"), []).append(
            [at, b["mean_confidence"]]
        )
    return [
        {"name": f"{version} ({role}) {'accuracy' if kind == 'accuracy' else 'mean confidence'}",
         "version": version, "role": role, "kind": kind, "points": points}
        for (version, role, kind), points in sorted(lines.items())
    ]  # fmt: skip


def _events(registry: ModelRegistry, tenant: str, name: str, since_us: int) -> list[dict[str, Any]]:
    events = [
        {"at_us": e.at_us, "at": iso(e.at_us), "kind": e.action,
         "text": f"{e.action} @{e.alias}: {e.from_version or '-'} -> {e.to_version} ({e.actor})"}
        for e in registry.history(name, tenant=tenant, limit=500)
        if e.action in EVENT_ACTIONS and e.at_us >= since_us
    ]  # fmt: skip
    events += [
        {"at_us": s.at_us, "at": iso(s.at_us), "kind": "switch",
         "text": f"{s.worker} ({s.pipeline}/{s.stage}) serves @{s.alias} "
                 f"{s.from_version or '-'} -> {s.to_version}"}
        for s in registry.switches(name, since_us=since_us)
    ]  # fmt: skip
    return sorted(events, key=lambda e: e["at_us"])


__all__ = ["EVENT_ACTIONS", "timeline"]
