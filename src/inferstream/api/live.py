"""The live dashboard: its page and the authenticated WebSocket that feeds it.

``GET /dashboard`` serves the page (HTML, JS, CSS and the vendored Chart.js from the
package's ``static/dashboard`` folder; it works with no internet). ``/v1/live`` is a
WebSocket: the client authenticates with its JWT or an API key (``?token=`` or, so it
stays out of access logs, a first message ``{"token": ...}``), then receives one snapshot
of its own tenant per second. A bad token closes the socket with code 4401, a role
that may not read (scanner) with 4403.

One :class:`LiveHub` per app aggregates on the server: once a tick it reads what is
new for each tenant that has subscribers (:mod:`~inferstream.api.live_source`) and
hands every subscriber the same snapshot. Each subscriber has a one-slot queue that
keeps only the newest snapshot, so a slow browser skips ticks instead of piling them
up. The hub reads ``app.state.store``, ``app.state.bus`` (optional) and
``app.state.settings.pipeline``, or is installed explicitly with :func:`install_hub`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from starlette.datastructures import State

from inferstream.api.auth import Principal, client_address, principal_for
from inferstream.api.errors import ApiError, NotFound
from inferstream.api.live_aggregate import TenantWindow
from inferstream.api.live_source import StageMeters, TenantFeed, tenant_snapshot
from inferstream.bus import Bus
from inferstream.envelope import now_us
from inferstream.errors import InferstreamError
from inferstream.pipeline import PipelineSpec
from inferstream.store import ResultsStore

log = logging.getLogger(__name__)

#: Roles that may watch the dashboard (read access); scanners only ingest.
VIEW_ROLES = frozenset({"admin", "operator", "viewer"})
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
AUTH_TIMEOUT_S = 10.0

#: Files of the page, by the name the browser asks for -> media type. A fixed list,
#: so no request path ever reaches the file system.
ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "chart.umd.min.js": "text/javascript",
    "chart.js.LICENSE.md": "text/markdown",
}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter()


def _static(name: str) -> bytes:
    return resources.files("inferstream").joinpath("static", "dashboard", name).read_bytes()


@router.get("/dashboard", include_in_schema=False)
def dashboard_page() -> Response:
    """The dashboard page; it logs in and connects to ``/v1/live`` itself."""
    headers = {"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"}
    return Response(_static("index.html"), media_type="text/html", headers=headers)


@router.get("/dashboard/assets/{name}", include_in_schema=False)
def dashboard_asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"the dashboard has no file {name[:64]!r}")
    return Response(_static(name), media_type=media_type, headers={"Cache-Control": "no-cache"})


class LiveHub:
    """Per-app aggregator: one snapshot per subscribed tenant per tick."""

    def __init__(
        self,
        store: ResultsStore,
        pipeline: PipelineSpec | None = None,
        bus: Bus | None = None,
        *,
        tick_s: float = 1.0,
    ) -> None:
        self.store = store
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
            snapshot = tenant_snapshot(self.store, feed, self.pipeline, meters)
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


def install_hub(app: FastAPI, hub: LiveHub) -> LiveHub:
    app.state.live_hub = hub
    return hub


def hub_of(state: State) -> LiveHub:
    """The app's hub, made on first use from ``state.store``/``bus``/``settings``."""
    hub: LiveHub | None = getattr(state, "live_hub", None)
    if hub is None:
        settings = getattr(state, "settings", None)
        pipeline = getattr(settings, "pipeline", None)
        hub = LiveHub(state.store, pipeline, getattr(state, "bus", None))
        state.live_hub = hub
    return hub


async def _principal(websocket: WebSocket, token: str | None) -> Principal:
    if not token:
        first = await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT_S)
        try:
            token = str(json.loads(first)["token"])
        except (ValueError, KeyError, TypeError):
            token = ""
    # JWTs for people, API keys for wall-screen kiosks; rate limited like every route.
    return principal_for(websocket.app.state, token, client_address(websocket))


@router.websocket("/v1/live")
async def live_feed(websocket: WebSocket, token: str | None = None) -> None:
    """Authenticate, then stream one snapshot of the caller's tenant per tick."""
    await websocket.accept()
    try:
        principal = await _principal(websocket, token)
    except (ApiError, TimeoutError) as exc:
        await websocket.close(CLOSE_UNAUTHORIZED, reason=_reason(exc, "not authenticated"))
        return
    if principal.role not in VIEW_ROLES:
        await websocket.close(CLOSE_FORBIDDEN, reason=f"role {principal.role!r} may not view")
        return
    hub = hub_of(websocket.app.state)
    queue = hub.subscribe(principal.tenant)
    sender = asyncio.create_task(_send_snapshots(websocket, queue))
    try:
        await _drain_until_closed(websocket)
    finally:
        sender.cancel()
        hub.unsubscribe(principal.tenant, queue)
        with contextlib.suppress(asyncio.CancelledError):
            await sender


async def _send_snapshots(websocket: WebSocket, queue: asyncio.Queue[str]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.send_text(await queue.get())


async def _drain_until_closed(websocket: WebSocket) -> None:
    """Wait for the client to go; it has nothing to say after authenticating."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message: Any = await websocket.receive()
            if message.get("type") == "websocket.disconnect":
                return


def _reason(exc: BaseException, fallback: str) -> str:
    # A close reason is limited to 123 bytes.
    return (str(exc) or fallback)[:120]
