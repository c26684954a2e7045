"""Several worker processes writing to one store at once, with overlapping batches."""

from __future__ import annotations

import multiprocessing

from inferstream.store import ResultRow, ResultsStore

WRITERS = 3
BATCHES = 15
BATCH_SIZE = 40


def _write(url: str, tenant: str, writer: int) -> None:
    store = ResultsStore(url)  # each process opens (and migrates) on its own
    try:
        for batch in range(BATCHES):
            # Consecutive writers overlap by half a batch, like redeliveries do.
            start = (writer * BATCHES + batch) * BATCH_SIZE // 2
            rows = [_row(tenant, n) for n in range(start, start + BATCH_SIZE)]
            store.upsert_results(rows)
    finally:
        store.close()


def _row(tenant: str, n: int) -> ResultRow:
    return ResultRow(
        id=f"scan-{n:06d}",
        tenant=tenant,
        label="female",
        confidence=0.9,
        scores={"female": 0.9},
        model_name="m",
        model_version="1",
        created_at_us=n,
        ingested_at_us=n,
        stored_at_us=n,
        latency_ms=0.0,
    )


def test_concurrent_writer_processes_lose_and_double_nothing(
    store_url: str, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_write, args=(store_url, acme, w)) for w in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * WRITERS
    last_start = (WRITERS * BATCHES - 1) * BATCH_SIZE // 2
    with ResultsStore(store_url, migrate=False) as store:
        assert store.count_results(acme) == last_start + BATCH_SIZE
