"""The permission matrix: which roles may call which route. The one place it is written.

Keys are ``"METHOD /path"`` exactly as the route is declared; every route of the
app must appear here or in :data:`PUBLIC` (a test walks the app's routes and fails
on one that is missing). ``docs/api.md`` shows the same table.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["admin", "operator", "viewer", "device"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer", "device")

_READ: frozenset[Role] = frozenset({"admin", "operator", "viewer"})
_OPERATE: frozenset[Role] = frozenset({"admin", "operator"})
_ADMIN: frozenset[Role] = frozenset({"admin"})
# Ingest: devices (scanners, cameras, edge agents) and people who operate the pipeline.
_INGEST: frozenset[Role] = frozenset({"admin", "operator", "device"})

PERMISSIONS: dict[str, frozenset[Role]] = {
    "POST /v1/scans": _INGEST,
    "GET /v1/scans/{scan_id}": _READ,
    "GET /v1/scans/{scan_id}/image": _READ,
    "GET /v1/results": _READ,
    "GET /v1/apps": _READ,
    "GET /v1/apps/{app}": _READ,
    "GET /v1/apps/{app}/records": _READ,
    "GET /v1/apps/{app}/records/{record_id}": _READ,
    "GET /v1/groups/{group}/summary": _READ,
    "GET /v1/groups/{group}/export.csv": _READ,
    "GET /v1/models": _READ,
    "GET /v1/models/accuracy": _READ,
    "POST /v1/feedback": _OPERATE,
    "POST /v1/admin/replay": _OPERATE,
    "GET /v1/admin/users": _ADMIN,
    "POST /v1/admin/users": _ADMIN,
    "DELETE /v1/admin/users/{username}": _ADMIN,
    "GET /v1/admin/keys": _ADMIN,
    "POST /v1/admin/keys": _ADMIN,
    "DELETE /v1/admin/keys/{key_id}": _ADMIN,
    "GET /v1/whoami": frozenset(ROLES),
}

#: WebSocket paths -> roles (the live feed authenticates inside the socket).
WEBSOCKETS: dict[str, frozenset[Role]] = {"/v1/live": _READ}

#: Routes anyone may call: login, probes, metrics (scrape them from inside the network),
#: the OpenAPI documents, and the dashboard's static page (its data comes over the
#: authenticated WebSocket).
PUBLIC: frozenset[str] = frozenset(
    {
        "POST /auth/token",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /docs",
        "GET /docs/oauth2-redirect",
        "GET /redoc",
        "GET /dashboard",
        "GET /dashboard/assets/{name}",
    }
)


def roles_for(route: str) -> frozenset[Role]:
    """The roles allowed on ``route``; a KeyError at import time names a missing entry."""
    return PERMISSIONS[route]
