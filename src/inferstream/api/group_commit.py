"""Group commit: the scans of concurrent ingest requests recorded and produced together."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool

from inferstream.envelope import Envelope

R = TypeVar("R")
#: A request's blocking work before its scans are recorded: its envelopes and an answer.
Prepare = Callable[[], tuple[list[Envelope], Any]]


class GroupCommit:
    """Scans of concurrent requests recorded and produced together, per tenant.

    A raw DICOM request carries one scan, and recording plus producing it alone cost
    two SQLite commits (two fsyncs) per request: about 45 requests/s in all, whatever
    the CPU, and every waiting request held a worker thread that reads then lacked
    (bench/api_bench.py). Requests arriving while a flush runs join the next one, which
    takes them all: each 202 still waits until its scans are recorded and on the bus.

    A request may hand over its blocking work too (:meth:`publish_prepared`: checking
    its scans, keeping their bytes), done in the flush's worker thread: one thread hop
    per group instead of one per request, which under load cost more CPU than the
    work itself (bench/ingest_http_bench.py).
    """

    def __init__(self, flush: Callable[[list[Envelope]], None]) -> None:
        self.flush = flush  # blocking: records and produces one group, in a thread
        self._pending: dict[str, list[tuple[Prepare, asyncio.Future[Any]]]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}

    async def publish(self, tenant: str, envelopes: list[Envelope]) -> None:
        """Return once ``envelopes`` are recorded and durably on the ingest topic."""
        await self.publish_prepared(tenant, lambda: (envelopes, None))

    async def publish_prepared(
        self, tenant: str, prepare: Callable[[], tuple[list[Envelope], R]]
    ) -> tuple[list[Envelope], R]:
        """Run ``prepare`` (blocking) in the next group's thread, then record and produce
        the envelopes it made with the group's; return what it returned once they are
        durably on the ingest topic. What ``prepare`` raises is this request's alone."""
        future: asyncio.Future[tuple[list[Envelope], R]]
        future = asyncio.get_running_loop().create_future()
        # In this request's context (its trace), not the flusher task's.
        own = partial(contextvars.copy_context().run, prepare)
        self._pending.setdefault(tenant, []).append((own, future))
        if tenant not in self._flushers:
            self._flushers[tenant] = asyncio.create_task(self._flush(tenant))
        return await future

    async def _flush(self, tenant: str) -> None:
        try:
            while batch := self._pending.pop(tenant, []):
                try:
                    outcomes = await run_in_threadpool(self._prepare_and_flush, batch)
                except BaseException as exc:  # cancelled (shutdown): nobody waits forever
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    raise
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its client went away meanwhile
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            del self._flushers[tenant]

    def _prepare_and_flush(
        self, batch: list[tuple[Prepare, asyncio.Future[Any]]]
    ) -> list[tuple[list[Envelope], Any] | Exception]:
        """Every request's work, then one flush of all their envelopes; per request, what
        it gets: its result, its own error, or the flush's (the bus or store failed)."""
        outcomes: list[tuple[list[Envelope], Any] | Exception] = []
        for prepare, _ in batch:
            try:
                outcomes.append(prepare())
            except Exception as exc:  # a bad scan, a full quota: that request's answer
                outcomes.append(exc)
        envelopes = [env for out in outcomes if not isinstance(out, Exception) for env in out[0]]
        if envelopes:
            try:
                self.flush(envelopes)
            except Exception as exc:  # every request with scans in the group hears it
                return [out if isinstance(out, Exception) else exc for out in outcomes]
        return outcomes
