"""What one live-dashboard tick costs the server at the flagship's rate (1,000 scans/s).

Fills a SQLite store with a minute of history at ``--rate`` scans/s, then for
``--ticks`` seconds writes one second's worth of scans and runs one hub tick for the
tenant, as the server does once a second. Prints the first tick (the backfill), the
steady ticks' p50/max, the snapshot size, and as a baseline measured in the same run
the time the store took to write that second's scans. Usage::

    .venv/bin/python bench/dashboard_bench.py --rate 1000 --ticks 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from inferstream.api.live_hub import LiveHub
from inferstream.apps.eggs import APP
from inferstream.envelope import now_us
from inferstream.store import ResultRow, ResultsStore

LABELS = ("female", "male", "not_developing")
TENANT = "bench"


def rows_for_second(second_start_us: int, rate: int, offset: int) -> list[ResultRow]:
    rows = []
    for i in range(rate):
        n = offset + i
        stored = second_start_us + i * (1_000_000 // rate)
        rows.append(
            ResultRow(
                id=uuid.uuid4().hex, tenant=TENANT, label=LABELS[n % 3],
                confidence=0.4 + (n % 60) / 100,
                scores={"female": 0.5, "male": 0.3, "not_developing": 0.2},
                model_name="egg_sexing", model_version="1.0.0",
                created_at_us=stored - 30_000, ingested_at_us=stored - 25_000,
                stored_at_us=stored, latency_ms=20 + n % 40, app="eggs", head="sex",
                subject=f"EGG-{n:07d}", group=f"TRAY-{n // 300:04d}", source="SCANNER-01",
            )
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--history-s", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = ResultsStore(f"sqlite:///{Path(folder) / 'results.db'}")
        start = now_us() - args.history_s * 1_000_000
        for s in range(args.history_s):
            store.upsert_results(rows_for_second(start + s * 1_000_000, args.rate, s * args.rate))
        store.refresh_statistics()  # as the API does every 30 s
        hub = LiveHub(store, APP)
        began = time.perf_counter()
        snapshot = hub.tick([hub.channel(TENANT)])[hub.channel(TENANT)]
        first_s = time.perf_counter() - began
        writes, ticks = [], []
        for t in range(args.ticks):
            batch = rows_for_second(
                now_us() - 1_000_000, args.rate, (args.history_s + t) * args.rate
            )
            began = time.perf_counter()
            store.upsert_results(batch)
            writes.append(time.perf_counter() - began)
            began = time.perf_counter()
            snapshot = hub.tick([hub.channel(TENANT)])[hub.channel(TENANT)]
            ticks.append(time.perf_counter() - began)
        store.close()
    print(f"rate {args.rate} scans/s, history {args.history_s} s, {args.ticks} ticks")
    print(f"first tick (backfill of {args.history_s * args.rate} rows): {first_s * 1000:.0f} ms")
    print(
        f"steady tick: p50 {statistics.median(ticks) * 1000:.1f} ms, max {max(ticks) * 1000:.1f} ms"
    )
    write_ms = statistics.median(writes) * 1000
    print(f"baseline, store write of one second's scans: p50 {write_ms:.1f} ms")
    print(f"snapshot: {len(snapshot)} bytes per tenant per second")


if __name__ == "__main__":
    main()
