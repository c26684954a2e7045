"""A known run written through the results store, and the store's own counts of it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from inferstream.analytics.query import open_export, run
from inferstream.store import (
    DeadLetterRow,
    Feedback,
    PredictionRow,
    ResultRow,
    ResultsStore,
    schema,
)

LABELS = ("female", "male", "not_developing")
#: 2026-03-10 00:00 UTC, in microseconds.
DAY0_US = 1_773_100_800_000_000
HOUR_US = 3_600_000_000


@dataclass
class KnownRun:
    """Writes scans of two tenants and remembers every id it wrote."""

    store: ResultsStore
    written: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    serial: int = 0

    def scans(self, tenant: str, count: int, *, start_us: int, group: str) -> list[ResultRow]:
        rows = []
        for i in range(count):
            self.serial += 1
            at = start_us + i * 60_000_000  # one a minute
            rows.append(_record(tenant, f"{tenant}-scan-{self.serial}", at, group, self.serial))
        shadows = [_shadow(row) for row in rows[::2]]
        self.store.write_batch(results=rows, predictions=[r.champion() for r in rows] + shadows)
        for row in rows:
            self.written[(row.tenant, row.label, row.group or "")] += 1
        return rows

    def labels(self, rows: list[ResultRow], at_us: int) -> None:
        """Ground truth for every other scan: the true label is ``female`` throughout."""
        entries = [
            Feedback(row.tenant, "eggs", row.subject or "", "sex", "female", "lab", at_us)
            for row in rows[::2]
        ]
        self.store.add_feedback_batch(entries)

    def dead_letters(self, tenant: str, count: int, *, at_us: int) -> None:
        for i in range(count):
            self.serial += 1
            self.store.record_dead_letter(
                DeadLetterRow(
                    id=f"{tenant}-dl-{self.serial}", tenant=tenant, stage="classify",
                    error_type="DecodeError" if i % 2 else "ModelError",
                    message="bad scan", attempts=3, topic="scans.raw", partition=0,
                    offset=i, at_us=at_us + i,
                )
            )  # fmt: skip


def _record(tenant: str, ident: str, at: int, group: str, serial: int) -> ResultRow:
    label = LABELS[serial % 3]
    return ResultRow(
        id=ident, tenant=tenant, label=label, confidence=0.8,
        scores={label: 0.8}, model_name="egg_sexing", model_version="1.0.0",
        created_at_us=at - 50_000, ingested_at_us=at - 40_000, stored_at_us=at,
        latency_ms=50.0, subject=f"EGG-{ident}", group=group, source="SCANNER-01",
        app="eggs", head="sex", attributes={"egg_id": f"EGG-{ident}", "tray": group},
    )  # fmt: skip


def _shadow(row: ResultRow) -> PredictionRow:
    return PredictionRow(
        tenant=row.tenant, record_id=row.id, head="sex", role="shadow",
        model_name="egg_sexing", model_version="2.0.0", label="female", confidence=0.7,
        scores={"female": 0.7}, predicted_at_us=row.stored_at_us, stored_at_us=row.stored_at_us,
    )  # fmt: skip


def export_counts(place: Path | str) -> dict[str, Counter[tuple[str, ...]]]:
    """An export's counts through DuckDB (a folder or ``s3://bucket/prefix``), keyed as
    :func:`store_counts` keys the store's."""
    conn = open_export(place)
    try:
        return {
            name: Counter({tuple(map(str, row[:-1])): int(row[-1]) for row in run(conn, sql).rows})
            for name, sql in EXPORT_QUERIES.items()
        }
    finally:
        conn.close()


def store_counts(store: ResultsStore) -> dict[str, Counter[tuple[str, ...]]]:
    """The store's own counts, straight from its tables."""
    r, p, f, d = schema.records, schema.predictions, schema.feedback, schema.dead_letters
    queries = {
        "records": select(r.c.tenant, r.c.label, r.c.group_key, func.count()).group_by(
            r.c.tenant, r.c.label, r.c.group_key
        ),
        "predictions": select(p.c.tenant, p.c.role, p.c.model_version, func.count()).group_by(
            p.c.tenant, p.c.role, p.c.model_version
        ),
        "feedback": select(f.c.tenant, f.c.label, func.count()).group_by(f.c.tenant, f.c.label),
        "dead_letters": select(d.c.tenant, d.c.error_type, func.count()).group_by(
            d.c.tenant, d.c.error_type
        ),
    }
    with store.engine.connect() as conn:
        return {
            name: Counter({tuple(map(str, row[:-1])): int(row[-1]) for row in conn.execute(q)})
            for name, q in queries.items()
        }


#: The same counts asked of DuckDB over an export.
EXPORT_QUERIES = {
    "records": "SELECT tenant, label, group_key, count(*) FROM records GROUP BY ALL",
    "predictions": "SELECT tenant, role, model_version, count(*) FROM predictions GROUP BY ALL",
    "feedback": "SELECT tenant, label, count(*) FROM feedback GROUP BY ALL",
    "dead_letters": "SELECT tenant, error_type, count(*) FROM dead_letters GROUP BY ALL",
}
