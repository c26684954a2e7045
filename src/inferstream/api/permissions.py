"""The permission matrix: which roles may call which route. The one place it is written.

Keys are ``"METHOD /path"`` exactly as the route is declared; every route of the
app must appear here or in :data:`PUBLIC` (a test walks the app's routes and fails
on one that is missing). ``docs/api.md`` shows the same table. An application's own
routes carry their rows with them (:class:`inferstream.api.app_routes.AppRoutes`),
written with the role sets below; :func:`inferstream.api.app_routes.served_permissions`
is the whole matrix of an API.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["admin", "operator", "viewer", "device"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer", "device")

#: Role sets the matrix is written with (an application's routes use them too).
READ: frozenset[Role] = frozenset({"admin", "operator", "viewer"})
OPERATE: frozenset[Role] = frozenset({"admin", "operator"})
ADMIN: frozenset[Role] = frozenset({"admin"})
# Ingest: devices (scanners, cameras, edge agents) and people who operate the pipeline.
INGEST: frozenset[Role] = frozenset({"admin", "operator", "device"})

PERMISSIONS: dict[str, frozenset[Role]] = {
    "POST /v1/scans": INGEST,
    "POST /dicomweb/studies": INGEST,
    "POST /dicomweb/studies/{study}": INGEST,
    "GET /v1/scans/{scan_id}": READ,
    "GET /v1/scans/{scan_id}/image": READ,
    "GET /v1/results": READ,
    "GET /v1/apps": READ,
    "GET /v1/apps/{app}": READ,
    "GET /v1/apps/{app}/records": READ,
    "GET /v1/apps/{app}/records/{record_id}": READ,
    "GET /v1/groups/{group}/summary": READ,
    "GET /v1/groups/{group}/export.csv": READ,
    "GET /v1/models": READ,
    "GET /v1/models/accuracy": READ,
    "GET /v1/registry/models": READ,
    "GET /v1/registry/models/{name}": READ,
    "GET /v1/registry/models/{name}/evaluation": READ,
    "GET /v1/registry/models/{name}/timeline": READ,
    "POST /v1/registry/models": OPERATE,
    "PUT /v1/registry/models/{name}/aliases/{alias}": OPERATE,
    "POST /v1/registry/models/{name}/aliases/{alias}/rollback": OPERATE,
    "POST /v1/feedback": OPERATE,
    "POST /v1/admin/replay": OPERATE,
    "GET /v1/admin/users": ADMIN,
    "POST /v1/admin/users": ADMIN,
    "DELETE /v1/admin/users/{username}": ADMIN,
    "GET /v1/admin/keys": ADMIN,
    "POST /v1/admin/keys": ADMIN,
    "DELETE /v1/admin/keys/{key_id}": ADMIN,
    # Erasure of one subject's data (inferstream.store.erasure).
    "DELETE /v1/admin/subjects/{subject}": ADMIN,
    # The tenant's stored retention policy (inferstream.api.retention).
    "GET /v1/admin/retention": ADMIN,
    "PUT /v1/admin/retention": ADMIN,
    "DELETE /v1/admin/retention": ADMIN,
    # Sharing grants of the tenant's records with another tenant (inferstream.api.grants).
    "POST /v1/grants": ADMIN,
    "GET /v1/grants": ADMIN,
    "DELETE /v1/grants/{grant_id}": ADMIN,
    "GET /v1/whoami": frozenset(ROLES),
    # Saved analytical queries over the tenant's Parquet export (inferstream.api.analytics).
    "GET /v1/analytics/queries": READ,
    "GET /v1/analytics/queries/{name}": READ,
    "PUT /v1/analytics/queries/{name}": ADMIN,
    "DELETE /v1/analytics/queries/{name}": ADMIN,
    "GET /v1/analytics/reports/{day}": READ,
    "GET /v1/audit": ADMIN,
    "GET /v1/audit/export": ADMIN,
    "GET /v1/audit/verify": ADMIN,
    # The v2 inference protocol (inferstream.api.v2): who may read models may run them.
    "GET /v2": READ,
    "GET /v2/models/{name}": READ,
    "GET /v2/models/{name}/versions/{version}": READ,
    "GET /v2/models/{name}/ready": READ,
    "GET /v2/models/{name}/versions/{version}/ready": READ,
    "POST /v2/models/{name}/infer": READ,
    "POST /v2/models/{name}/versions/{version}/infer": READ,
}

#: WebSocket paths -> roles (the live feed authenticates inside the socket).
WEBSOCKETS: dict[str, frozenset[Role]] = {"/v1/live": READ}

#: Routes anyone may call: login, probes (the v2 protocol's too), metrics (scrape them
#: from inside the network), the OpenAPI documents, and the dashboard's static page (its
#: data comes over the authenticated WebSocket).
PUBLIC: frozenset[str] = frozenset(
    {
        "POST /auth/token",
        "GET /healthz",
        "GET /readyz",
        "GET /v2/health/live",
        "GET /v2/health/ready",
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
