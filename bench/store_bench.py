"""Results-store write throughput: records/s of batch upserts on SQLite and PostgreSQL.

Prints, per backend and batch size: fresh inserts through ``upsert_results`` (one
transaction per batch, one executemany per table: each record and its champion
prediction), a redelivery of the same batches (all conflicts, nothing written), and
as the baseline measured in the same run, plain INSERTs of the same rows into the same
two tables through the same engine without ON CONFLICT.

    .venv/bin/python bench/store_bench.py [--rows 20000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, insert, text

from inferstream.store import ResultRow, ResultsStore
from inferstream.store.schema import predictions, records

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


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


def rate(rows: int, action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return rows / (time.perf_counter() - start)


def batches(rows: Sequence[ResultRow], size: int) -> list[Sequence[ResultRow]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def bench(name: str, url: str, total: int) -> None:
    store = ResultsStore(url)
    for size in (64, 512):
        fresh = batches(make_rows(f"t-{uuid.uuid4().hex[:6]}", total), size)
        plain = batches(make_rows(f"t-{uuid.uuid4().hex[:6]}", total), size)

        def upsert_all(groups: list[Sequence[ResultRow]] = fresh) -> None:
            for group in groups:
                store.upsert_results(group)

        def insert_all(groups: list[Sequence[ResultRow]] = plain) -> None:
            for group in groups:
                with store.engine.begin() as conn:
                    conn.execute(insert(records), [row.as_params() for row in group])
                    champions = [row.champion().as_params() for row in group]
                    conn.execute(insert(predictions), champions)

        baseline = rate(total, insert_all)
        upserted = rate(total, upsert_all)
        redelivered = rate(total, upsert_all)
        print(
            f"{name:10s} batch {size:4d}: upsert {upserted:9,.0f} records/s   "
            f"redelivery {redelivered:9,.0f} records/s   "
            f"plain insert (baseline) {baseline:9,.0f} records/s"
        )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--postgres", default=DEFAULT_PG)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench("sqlite", f"sqlite:///{Path(tmp) / 'results.db'}", args.rows)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.postgres)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        bench(
            "postgresql", f"{args.postgres}?options={quote(f'-c search_path={schema}')}", args.rows
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
