"""What record ids in time order would save the results store's writes.

Record ids today are random (``uuid4`` at ingest, a BLAKE2 hash per stage output), so
each record lands on its own leaf page of the key index, of ``root_id``'s and of the
predictions' key: a batch of 9 records rewrites some 70 pages. Ids that start with the
time (48 bits of milliseconds, then 80 random bits, as UUIDv7 does) land on the last
pages. This writes ``--prefill`` records into a fresh SQLite store, then ``--batches``
batches of ``--batch`` through ``ResultsStore.upsert_results`` (the store stage's call),
once with random ids and once with time-ordered ones, taking turns for ``--rounds``;
subjects are random in both, as egg ids are. Prints per batch the median and p99 wall
time and this process's CPU.

    .venv/bin/python bench/store_ids.py [--prefill 100000] [--batches 1500] [--batch 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import replace

from store_bench import make_rows

from inferstream.store import ResultRow, ResultsStore

START_MS = 1_700_000_000_000


def ids(kind: str, count: int) -> list[str]:
    if kind == "random":
        return [uuid.uuid4().hex for _ in range(count)]
    return [f"{START_MS + n:012x}{os.urandom(10).hex()}" for n in range(count)]


def one_run(kind: str, args: argparse.Namespace) -> tuple[float, float, float]:
    total = args.prefill + args.batches * args.batch
    rows: list[ResultRow] = [
        replace(row, id=record_id, subject=f"EGG-{os.urandom(5).hex()}")
        for row, record_id in zip(make_rows("bench", total), ids(kind, total), strict=True)
    ]
    with tempfile.TemporaryDirectory(prefix="store-ids-") as tmp:
        store = ResultsStore(f"sqlite:///{tmp}/results.db")
        try:
            for first in range(0, args.prefill, 512):
                store.upsert_results(rows[first : min(first + 512, args.prefill)])
            waits = []
            cpu = time.process_time()
            for number in range(args.batches):
                first = args.prefill + number * args.batch
                at = time.perf_counter()
                store.upsert_results(rows[first : first + args.batch])
                waits.append(time.perf_counter() - at)
            cpu = time.process_time() - cpu
        finally:
            store.close()
    waits.sort()
    return (statistics.median(waits) * 1e3, waits[int(len(waits) * 0.99)] * 1e3,
            cpu / args.batches * 1e6)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefill", type=int, default=100_000, help="records stored first")
    parser.add_argument("--batches", type=int, default=1500, help="batches timed")
    parser.add_argument("--batch", type=int, default=9, help="records per batch")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each kind of id")
    args = parser.parse_args()
    for number in range(1, args.rounds + 1):
        for kind in ("random", "ordered"):
            p50, p99, cpu = one_run(kind, args)
            print(f"round {number}  {kind:>7} ids  batch of {args.batch}: wall p50 {p50:5.2f} ms  "
                  f"p99 {p99:5.2f} ms  CPU {cpu:5.0f} us/batch", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
