"""Results-store write throughput: records/s of batch upserts on SQLite and PostgreSQL.

Prints, per backend and batch size: fresh inserts through ``upsert_results`` (one
transaction per batch, one executemany per table: each record and its champion
prediction), a redelivery of the same batches (all conflicts, nothing written), and
as the baseline measured in the same run, plain INSERTs of the same rows into the same
two tables through the same engine without ON CONFLICT (SQLAlchemy Core's own path).
Each is shown as records/s and as microseconds per batch, wall clock and this
process's CPU (the store worker's cost; the database server's is not in it), the best
of ``--repeats`` runs.

    .venv/bin/python bench/store_bench.py [--rows 20000] [--batch 1 4 16 64 512]
        [--repeats 3] [--postgres URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, insert, text

from inferstream.store import ResultRow, ResultsStore
from inferstream.store.schema import predictions, records

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

Batches = list[Sequence[ResultRow]]


def make_rows(tenant: str, count: int) -> list[ResultRow]:
    return [
        ResultRow(
            id=uuid.uuid4().hex,
            tenant=tenant,
            label="female",
            confidence=0.91,
            scores={"female": 0.91, "male": 0.06, "not_developing": 0.03},
            model_name="egg_sexing",
            model_version="1.0.0",
            created_at_us=1_700_000_000_000_000 + n,
            ingested_at_us=1_700_000_000_000_100 + n,
            stored_at_us=1_700_000_000_050_000 + n,
            latency_ms=50.0,
            app="eggs",
            head="sex",
            subject=f"EGG-{n:06d}",
            group=f"TRAY-{n // 500:04d}",
            source="SCANNER-01",
            attributes={
                "egg_id": f"EGG-{n:06d}",
                "tray": f"TRAY-{n // 500:04d}",
                "scanner": "SCANNER-01",
            },
            lineage=[{"stage": "classify", "at_us": 1, "worker": "w"}],
            trace_id=uuid.uuid4().hex,
        )
        for n in range(count)
    ]


@dataclass(frozen=True)
class Timing:
    """One run over ``batches`` batches of ``rows`` records in all."""

    rows: int
    batches: int
    wall_s: float
    cpu_s: float

    def __str__(self) -> str:
        per_batch = 1e6 / self.batches
        return (
            f"{self.rows / self.wall_s:9,.0f} rec/s {self.wall_s * per_batch:7,.0f} us/batch "
            f"(cpu {self.cpu_s * per_batch:6,.0f})"
        )


def timed(rows: int, action: Callable[[Batches], None], groups: Batches) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    action(groups)
    return Timing(rows, len(groups), time.perf_counter() - wall, time.process_time() - cpu)


def best(timings: Sequence[Timing]) -> Timing:
    """The least disturbed run: a shared machine only ever adds time."""
    return min(timings, key=lambda timing: timing.wall_s)


def batches(rows: Sequence[ResultRow], size: int) -> Batches:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def bench(name: str, url: str, total: int, sizes: Sequence[int], repeats: int) -> None:
    store = ResultsStore(url)

    def upsert_all(groups: Batches) -> None:
        for group in groups:
            store.upsert_results(group)

    def insert_all(groups: Batches) -> None:
        for group in groups:
            with store.engine.begin() as conn:
                conn.execute(insert(records), [row.as_params() for row in group])
                champions = [row.champion().as_params() for row in group]
                conn.execute(insert(predictions), champions)

    for size in sizes:
        runs: dict[str, list[Timing]] = {"upsert": [], "redelivery": [], "plain insert": []}
        for _ in range(repeats):
            fresh = batches(make_rows(f"t-{uuid.uuid4().hex[:6]}", total), size)
            plain = batches(make_rows(f"t-{uuid.uuid4().hex[:6]}", total), size)
            runs["plain insert"].append(timed(total, insert_all, plain))
            runs["upsert"].append(timed(total, upsert_all, fresh))
            runs["redelivery"].append(timed(total, upsert_all, fresh))
        figures = "   ".join(f"{what} {best(timings)}" for what, timings in runs.items())
        print(f"{name:10s} batch {size:4d}: {figures}", flush=True)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="records per run and size")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[64, 512], help="records per batch (several)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per size; the best is shown")
    parser.add_argument("--postgres", default=DEFAULT_PG)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], nargs="+",
                        default=["sqlite", "postgresql"])  # fmt: skip
    args = parser.parse_args()
    if "sqlite" in args.backend:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'results.db'}"
            bench("sqlite", url, args.rows, args.batch, args.repeats)
    if "postgresql" in args.backend:
        postgres(args.postgres, args.rows, args.batch, args.repeats)


def postgres(admin_url: str, total: int, sizes: Sequence[int], repeats: int) -> None:
    """The bench on PostgreSQL, in a schema of its own dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = f"{admin_url}?options={quote(f'-c search_path={schema}')}"
        bench("postgresql", url, total, sizes, repeats)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
