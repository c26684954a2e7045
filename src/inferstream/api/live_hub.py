"""The live dashboard's aggregator: one snapshot per subscribed tenant per tick.

Made once per API process (by the app's lifespan); every WebSocket of a tenant gets
the same snapshot. Each subscriber has a one-slot queue that keeps only the newest
snapshot, so a slow browser skips ticks instead of piling them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from inferstream.api.live_aggregate import TenantWindow
from inferstream.api.live_source import StageMeters, TenantFeed, tenant_snapshot
from inferstream.application import AppSpec
from inferstream.bus import Bus
from inferstream.envelope import now_us
from inferstream.errors import InferstreamError
from inferstream.pipeline import PipelineSpec
from inferstream.store import ResultsStore

log = logging.getLogger(__name__)


class LiveHub:
    """Per-app aggregator: one snapshot per subscribed tenant per tick."""

    def __init__(
        self,
        store: ResultsStore,
        app: AppSpec,
        pipeline: PipelineSpec | None = None,
        bus: Bus | None = None,
        *,
        tick_s: float = 1.0,
    ) -> None:
        self.store = store
        self.app = app
        self.pipeline = pipeline
        self.meters = StageMeters(pipeline, bus) if pipeline is not None else None
        self.tick_s = tick_s
        self._subscribers: dict[str, set[asyncio.Queue[str]]] = {}
        self._feeds: dict[str, TenantFeed] = {}
        self._last: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, tenant: str) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        self._subscribers.setdefault(tenant, set()).add(queue)
        if tenant in self._last:
            queue.put_nowait(self._last[tenant])
        else:
            self._wake.set()  # a new tenant gets its first snapshot now, not next tick
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return queue

    def unsubscribe(self, tenant: str, queue: asyncio.Queue[str]) -> None:
        queues = self._subscribers.get(tenant, set())
        queues.discard(queue)
        if not queues:
            # Nobody watches this tenant: drop its window instead of keeping it warm.
            self._subscribers.pop(tenant, None)
            self._feeds.pop(tenant, None)
            self._last.pop(tenant, None)

    async def _run(self) -> None:
        while self._subscribers:
            self._wake.clear()  # before the tick: a subscriber joining during it wakes the next
            try:
                snapshots = await asyncio.to_thread(self.tick, list(self._subscribers))
            except InferstreamError as exc:
                log.warning("live dashboard tick failed, retrying next tick: %s", exc)
                snapshots = {}
            except Exception:
                # A bug must not freeze every dashboard silently: log it and keep ticking.
                log.exception("live dashboard tick crashed")
                snapshots = {}
            for tenant, message in snapshots.items():
                self._publish(tenant, message)
            for tenant in set(self._feeds) - set(self._subscribers):
                del self._feeds[tenant]  # unsubscribed while its tick ran
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_s)

    def tick(self, tenants: list[str]) -> dict[str, str]:
        """Build one snapshot per tenant (blocking: runs in a worker thread)."""
        meters = self.meters.read() if self.meters is not None else {}
        snapshots = {}
        for tenant in tenants:
            feed = self._feeds.get(tenant)
            if feed is None:
                feed = self._feeds[tenant] = TenantFeed(tenant, TenantWindow(now_us()))
            snapshot = tenant_snapshot(self.store, feed, self.pipeline, meters, self.app)
            snapshots[tenant] = json.dumps(snapshot, separators=(",", ":"))
        return snapshots

    def _publish(self, tenant: str, message: str) -> None:
        if tenant not in self._subscribers:
            return
        self._last[tenant] = message
        for queue in self._subscribers[tenant]:
            if queue.full():
                queue.get_nowait()  # keep only the newest snapshot for a slow client
            queue.put_nowait(message)
