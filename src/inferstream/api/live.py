"""The live dashboard: its page and the authenticated WebSocket that feeds it.

``GET /dashboard`` serves the page (HTML, JS, CSS and the vendored Chart.js from the
package's ``static/dashboard`` folder; it works with no internet). ``/v1/live`` is a
WebSocket: the client authenticates with its JWT or an API key (``?token=`` or, so it
stays out of access logs, a first message ``{"token": ...}``), then receives one snapshot
of its own tenant per second. A bad token closes the socket with code 4401, a role
that may not read (a device) with 4403.

The snapshots come from the process's :class:`~inferstream.api.live_hub.LiveHub`
(``Services.live``), which reads what is new for each tenant that has subscribers
once a tick (:mod:`~inferstream.api.live_source`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from importlib import resources
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from inferstream.api.audit import socket_entry
from inferstream.api.auth import Principal, client_address, principal_for
from inferstream.api.errors import ApiError, NotFound
from inferstream.api.live_hub import Channel
from inferstream.api.services import services_of

log = logging.getLogger(__name__)

#: Roles that may watch the dashboard (read access); devices only ingest.
VIEW_ROLES = frozenset({"admin", "operator", "viewer"})
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
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


async def _hello(
    websocket: WebSocket, token: str | None, app: str | None
) -> tuple[str, str | None]:
    """The token and the application asked for: from the URL, else the first message
    ``{"token": ..., "app": ...}`` (which keeps the token out of access logs)."""
    if token:
        return token, app
    first = await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT_S)
    try:
        hello = json.loads(first)
        return str(hello["token"]), str(hello["app"]) if hello.get("app") else app
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", app


def _principal(websocket: WebSocket, token: str) -> Principal:
    # JWTs for people, API keys for wall-screen kiosks; rate limited like every route.
    return principal_for(services_of(websocket), token, client_address(websocket))


@router.websocket("/v1/live")
async def live_feed(websocket: WebSocket, token: str | None = None, app: str | None = None) -> None:
    """Authenticate, then stream one snapshot per tick of the caller's tenant's records
    of one application (``app``; default: the pipeline's)."""
    await websocket.accept()
    channel = await _admit(websocket, token, app)
    if channel is None:
        return
    hub = services_of(websocket).live
    queue = hub.subscribe(channel)
    sender = asyncio.create_task(_send_snapshots(websocket, queue))
    try:
        await _drain_until_closed(websocket)
    finally:
        sender.cancel()
        hub.unsubscribe(channel, queue)
        with contextlib.suppress(asyncio.CancelledError):
            await sender


async def _admit(websocket: WebSocket, token: str | None, app: str | None) -> Channel | None:
    """The channel of an authenticated caller who may view, else None once the socket is
    closed with the reason; either way one audit entry for the subscription."""
    principal: Principal | None = None
    credential, wanted = "", app
    outcome, reason, channel = 101, "", None
    try:
        credential, wanted = await _hello(websocket, token, app)
        principal = _principal(websocket, credential)
        if principal.role not in VIEW_ROLES:
            outcome, reason = CLOSE_FORBIDDEN, f"role {principal.role!r} may not view"
        else:
            channel = services_of(websocket).live.channel(principal.tenant, wanted)
    except (ApiError, TimeoutError) as exc:
        outcome, reason = CLOSE_UNAUTHORIZED, _reason(exc, "not authenticated")
    except KeyError as exc:
        outcome, reason = CLOSE_NOT_FOUND, _reason(exc, "no such application")
    entry = socket_entry(websocket, principal, credential, outcome, wanted or "")
    services_of(websocket).audit.submit(entry)
    if channel is None:
        await websocket.close(outcome, reason=reason)
    return channel


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
