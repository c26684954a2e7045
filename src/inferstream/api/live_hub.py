"""The live dashboard's aggregator: one snapshot per watched channel per tick.

A channel is one tenant's records of one application; a deployment may show several
applications, and each dashboard watches the one it selected. Its newest table also
holds the records sharing grants let the tenant read, marked with their owner; they
are read through the grants each tick, so a revoked grant's records are in no
snapshot built after the revocation, and such a snapshot is never replayed to a new
subscriber.

Made once per API process (by the app's lifespan); every WebSocket of a tenant gets
the same snapshot. Each subscriber has a one-slot queue that keeps only the newest
snapshot, so a slow browser skips ticks instead of piling them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence

from inferstream.api.live_aggregate import TenantWindow
from inferstream.api.live_source import StageMeters, TenantFeed, tenant_snapshot
from inferstream.application import AppSpec
from inferstream.bus import Bus
from inferstream.envelope import now_us
from inferstream.errors import InferstreamError
from inferstream.pipeline import PipelineSpec
from inferstream.store import ResultsStore

log = logging.getLogger(__name__)
#: One tenant's records of one application: what a dashboard watches.
Channel = tuple[str, str]


class LiveHub:
    """Per-app aggregator: one snapshot per subscribed tenant per tick."""

    def __init__(
        self,
        store: ResultsStore,
        apps: AppSpec | Sequence[AppSpec],
        pipeline: PipelineSpec | None = None,
        bus: Bus | None = None,
        *,
        tick_s: float = 1.0,
    ) -> None:
        self.store = store
        listed = [apps] if isinstance(apps, AppSpec) else list(apps)
        self.apps = {app.name: app for app in listed}
        self.default_app = listed[0].name
        self.pipeline = pipeline
        self.meters = StageMeters(pipeline, bus) if pipeline is not None else None
        self.tick_s = tick_s
        self._subscribers: dict[Channel, set[asyncio.Queue[str]]] = {}
        self._feeds: dict[Channel, TenantFeed] = {}
        self._last: dict[Channel, str] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def channel(self, tenant: str, app: str | None = None) -> Channel:
        """What a subscriber watches: one tenant's records of one application."""
        name = app or self.default_app
        if name not in self.apps:
            raise KeyError(f"this deployment shows {', '.join(self.apps)}, not {name[:64]!r}")
        return tenant, name

    def subscribe(self, channel: Channel) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        self._subscribers.setdefault(channel, set()).add(queue)
        if channel in self._last:
            queue.put_nowait(self._last[channel])
        else:  # none yet, or the last one holds shared records: those are read afresh
            self._wake.set()  # a new channel gets its first snapshot now, not next tick
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return queue

    def unsubscribe(self, channel: Channel, queue: asyncio.Queue[str]) -> None:
        queues = self._subscribers.get(channel, set())
        queues.discard(queue)
        if not queues:
            # Nobody watches this channel: drop its window instead of keeping it warm.
            self._subscribers.pop(channel, None)
            self._feeds.pop(channel, None)
            self._last.pop(channel, None)

    async def _run(self) -> None:
        while self._subscribers:
            self._wake.clear()  # before the tick: a subscriber joining during it wakes the next
            try:
                snapshots = await asyncio.to_thread(self._build, list(self._subscribers))
            except InferstreamError as exc:
                log.warning("live dashboard tick failed, retrying next tick: %s", exc)
                snapshots = {}
            except Exception:
                # A bug must not freeze every dashboard silently: log it and keep ticking.
                log.exception("live dashboard tick crashed")
                snapshots = {}
            for channel, (message, shared) in snapshots.items():
                self._publish(channel, message, cache=not shared)
            for channel in set(self._feeds) - set(self._subscribers):
                del self._feeds[channel]  # unsubscribed while its tick ran
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_s)

    def tick(self, channels: Sequence[Channel]) -> dict[Channel, str]:
        """Build one snapshot per channel (blocking: runs in a worker thread)."""
        return {channel: message for channel, (message, _) in self._build(channels).items()}

    def _build(self, channels: Sequence[Channel]) -> dict[Channel, tuple[str, bool]]:
        """One snapshot per channel, and whether it holds records shared with the tenant."""
        meters = self.meters.read() if self.meters is not None else {}
        snapshots = {}
        for channel in channels:
            tenant, app = channel
            feed = self._feeds.get(channel)
            if feed is None:
                feed = self._feeds[channel] = TenantFeed(tenant, TenantWindow(now_us()))
            snapshot = tenant_snapshot(self.store, feed, self.pipeline, meters, self.apps[app])
            shared = any(scan["shared_from"] for scan in snapshot["newest"])
            snapshots[channel] = (json.dumps(snapshot, separators=(",", ":")), shared)
        return snapshots

    def _publish(self, channel: Channel, message: str, *, cache: bool = True) -> None:
        """Send ``message`` to the channel's subscribers; ``cache`` keeps it for the next
        one to join. A snapshot holding shared records is not kept: a grant revoked since
        it was built must not reach a new subscriber through it."""
        if channel not in self._subscribers:
            return
        if cache:
            self._last[channel] = message
        else:
            self._last.pop(channel, None)
        for queue in self._subscribers[channel]:
            if queue.full():
                queue.get_nowait()  # keep only the newest snapshot for a slow client
            queue.put_nowait(message)
