"""Group commit: the scans of concurrent ingest requests recorded and produced together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool

from inferstream.envelope import Envelope


class GroupCommit:
    """Scans of concurrent requests recorded and produced together, per tenant.

    A raw DICOM request carries one scan, and recording plus producing it alone cost
    two SQLite commits (two fsyncs) per request: about 45 requests/s in all, whatever
    the CPU, and every waiting request held a worker thread that reads then lacked
    (bench/api_bench.py). Requests arriving while a flush runs join the next one, which
    takes them all: each 202 still waits until its scans are recorded and on the bus.
    """

    def __init__(self, flush: Callable[[list[Envelope]], None]) -> None:
        self.flush = flush  # blocking: records and produces one group, in a thread
        self._pending: dict[str, list[tuple[list[Envelope], asyncio.Future[None]]]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}

    async def publish(self, tenant: str, envelopes: list[Envelope]) -> None:
        """Return once ``envelopes`` are recorded and durably on the ingest topic."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(tenant, []).append((envelopes, future))
        if tenant not in self._flushers:
            self._flushers[tenant] = asyncio.create_task(self._flush(tenant))
        await future

    async def _flush(self, tenant: str) -> None:
        try:
            while batch := self._pending.pop(tenant, []):
                envelopes = [env for group, _ in batch for env in group]
                try:
                    await run_in_threadpool(self.flush, envelopes)
                except Exception as exc:  # the bus or store failed: every request hears it
                    for _, future in batch:
                        if not future.done():  # done: its client went away meanwhile
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            del self._flushers[tenant]
