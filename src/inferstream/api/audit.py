"""The audit log in the API: one entry per request and per live-feed subscription, and
the routes that read it (``GET /v1/audit``, ``/v1/audit/export``, ``/v1/audit/verify``).

:class:`Record` (ASGI middleware, inside :class:`~inferstream.api.ops.Observe`) makes the
entry once the route has answered: the caller authentication found (or, on a refusal, the
identity its credential claims), the route template and its path parameters, the client
address (the peer, or what ``--proxy-headers`` says), the status, the request and trace
ids. Probes, metrics, the OpenAPI documents and the dashboard's static files are not
recorded. Entries are appended by :class:`~inferstream.api.audit_writer.AuditWriter`,
off the request path; the chain and its checks are :mod:`inferstream.store.audit`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import jwt
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferstream.api.auth import Principal, check_tenant_ok, client_address, is_api_key, require
from inferstream.api.permissions import roles_for
from inferstream.api.services import Services, services_of
from inferstream.envelope import now_us
from inferstream.store.audit import DEPLOYMENT, AuditEntry, AuditFilter, target_of
from inferstream.tracing import current_trace_hex

router = APIRouter(tags=["audit"])

#: Requests never recorded: probes, scrapes, documents and the dashboard's static files.
EXEMPT = frozenset(
    {
        "/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready",
        "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/dashboard",
    }
)  # fmt: skip
EXEMPT_PREFIX = "/dashboard/assets/"


def exempt(path: str) -> bool:
    return path in EXEMPT or path.startswith(EXEMPT_PREFIX)


class Record:
    """ASGI middleware: one audit entry per HTTP request that is not :func:`exempt`.

    While the writer's memory is full (the store down for long), audited requests are
    refused with 503 before they run: a request the log cannot keep is not served.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        services: Services = scope["app"].state.services
        if services.audit.full:
            await _refuse(scope, receive, send)
            return
        status = 500

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            services.audit.submit(_request_entry(scope, status))


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    body = {
        "error": "unavailable",
        "detail": "the audit log cannot be written now (the store is down); retry shortly",
    }
    await JSONResponse(body, 503, {"Retry-After": "5"})(scope, receive, send)  # fmt: skip


def _request_entry(scope: Scope, status: int) -> AuditEntry:
    state = scope.get("state", {})
    tenant, actor, kind, role = _actor(state.get("principal"), scope)
    route = getattr(scope.get("route"), "path", None)
    params = dict(scope.get("path_params") or {}) if route else {"path": scope["path"][:256]}
    return AuditEntry(
        tenant=tenant, at_us=now_us(), actor=actor, actor_kind=kind, role=role,
        action=f"{scope['method']} {route or '(unmatched)'}", target=target_of(params),
        source=client_address(HTTPConnection(scope)), status=status,
        request_id=state.get("request_id", ""), trace_id=current_trace_hex() or "",
    )  # fmt: skip


def socket_entry(
    websocket: HTTPConnection, principal: Principal | None, credential: str, outcome: int, app: str
) -> AuditEntry:
    """The entry of one live-feed subscription: ``outcome`` 101 when it was accepted,
    else the close code it was refused with."""
    tenant, actor, kind, role = _actor(principal, websocket.scope, credential)
    return AuditEntry(
        tenant=tenant, at_us=now_us(), actor=actor, actor_kind=kind, role=role,
        action="WS /v1/live", target=target_of({"app": app}),
        source=client_address(websocket), status=outcome, trace_id=current_trace_hex() or "",
    )  # fmt: skip


def _actor(
    principal: Principal | None, scope: Scope, credential: str = ""
) -> tuple[str, str, str, str]:
    """(tenant, actor, kind, role): of the authenticated principal, else of what the
    credential claims ("claimed key"/"claimed user", unchecked), else anonymous."""
    if principal is not None:
        kind = "key" if principal.subject.startswith("key:") else "user"
        return principal.tenant, principal.subject, kind, principal.role
    claimed = scope.get("state", {}).get("claimed") or _claim(credential or _credential(scope))
    if claimed is None:
        return DEPLOYMENT, "", "anonymous", ""
    tenant, actor, kind = claimed
    return (tenant if check_tenant_ok(tenant) else DEPLOYMENT), actor[:128], kind, ""


def _credential(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-api-key":
            return str(value.decode("latin-1"))
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return str(value[7:].decode("latin-1"))
    return ""


def _claim(credential: str) -> tuple[str, str, str] | None:
    """Who a credential says it is, without checking it."""
    if not credential:
        return None
    if is_api_key(credential):
        parts = credential.split(".")
        return (parts[1], f"key:{parts[2]}", "claimed key") if len(parts) == 4 else None
    try:
        claims = jwt.decode(credential, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    return str(claims.get("tenant", "")), str(claims.get("sub", "")), "claimed user"


def claim_login(request: Request, username: str) -> None:
    """Name the ``tenant/name`` a login claims, for its entry when it fails."""
    tenant, _, name = username.partition("/")
    request.state.claimed = (tenant, name, "claimed user")


# -- the routes ----------------------------------------------------------------


#: The largest time a filter takes (the database's 64-bit integer).
MAX_US = 2**63 - 1


class AuditEntryOut(BaseModel):
    seq: int
    tenant: str
    at_us: int
    actor: str
    actor_kind: str
    role: str
    action: str
    target: str
    source: str
    status: int
    request_id: str
    trace_id: str
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since_us: int | None = Field(default=None, ge=0, le=MAX_US)
    until_us: int | None = Field(default=None, ge=0, le=MAX_US)
    actor: str | None = Field(default=None, max_length=256)
    action: str | None = Field(default=None, max_length=256)
    target: str | None = Field(default=None, max_length=256)
    cursor: str | None = Field(default=None, pattern=r"^[0-9]{1,18}$",
                               description="next_cursor of the previous page")  # fmt: skip
    limit: int = Field(default=100, ge=1, le=1000)

    def filters(self) -> AuditFilter:
        return AuditFilter(self.since_us, self.until_us, self.actor, self.action, self.target)


class VerificationOut(BaseModel):
    tenant: str
    entries: int
    ok: bool
    first_broken: int | None
    reason: str
    signed: bool


def _guard(route: str) -> Any:
    return Depends(require(*roles_for(route)))


async def _flushed(request: Request) -> Services:
    """The services, once this process's entries so far are in the store (a reader
    sees the requests it just made, its own included)."""
    services = services_of(request)
    await run_in_threadpool(services.audit.flush)
    return services


@router.get("/v1/audit", response_model=AuditPage)
async def list_audit(
    query: Annotated[AuditQuery, Query()],
    request: Request,
    principal: Annotated[Principal, _guard("GET /v1/audit")],
) -> AuditPage:
    """Your tenant's audit entries, newest first; pass ``next_cursor`` for more."""
    services = await _flushed(request)
    items, cursor = await run_in_threadpool(
        services.audit.log.page, principal.tenant, query.filters(), query.cursor, query.limit
    )
    return AuditPage(items=[AuditEntryOut(**i.to_dict()) for i in items], next_cursor=cursor)


@router.get(
    "/v1/audit/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
async def export_audit(
    request: Request,
    principal: Annotated[Principal, _guard("GET /v1/audit/export")],
    format: Literal["jsonl", "csv"] = "jsonl",
    since_us: Annotated[int | None, Query(ge=0, le=MAX_US)] = None,
    until_us: Annotated[int | None, Query(ge=0, le=MAX_US)] = None,
) -> StreamingResponse:
    """Your tenant's whole audit log (or a time range of it), oldest first, streamed as
    JSON Lines or CSV."""
    services = await _flushed(request)
    entries = services.audit.log.entries(principal.tenant, AuditFilter(since_us, until_us))
    lines = csv_lines(entries) if format == "csv" else json_lines(entries)
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    disposition = f'attachment; filename="audit.{format}"'
    return StreamingResponse(lines, media_type=media,
                             headers={"Content-Disposition": disposition})  # fmt: skip


@router.get("/v1/audit/verify", response_model=VerificationOut)
async def verify_audit(
    request: Request,
    principal: Annotated[Principal, _guard("GET /v1/audit/verify")],
) -> VerificationOut:
    """Walk your tenant's chain: ``ok``, or the first entry that was changed or removed."""
    services = await _flushed(request)
    result = await run_in_threadpool(services.audit.log.verify, principal.tenant)
    return VerificationOut(**result.to_dict())


def json_lines(entries: Iterator[Any]) -> Iterator[str]:
    for stored in entries:
        yield json.dumps(stored.to_dict(), separators=(",", ":")) + "\n"


CSV_COLUMNS = tuple(AuditEntryOut.model_fields)


def csv_lines(entries: Iterator[Any]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for count, stored in enumerate(entries, 1):
        row = stored.to_dict()
        writer.writerow([_cell(row[name]) for name in CSV_COLUMNS])
        if count % 1000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _cell(value: object) -> object:
    # A cell starting with = + - @ is a formula to spreadsheets, and so is one after a
    # leading tab or carriage return (which they drop): neutralise it.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
