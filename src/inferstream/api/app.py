"""The composition root: :func:`create_app` wires settings, bus, store and routes.

The lifespan opens the bus (creating the pipeline's topics) and the results store,
and closes them in reverse order through an ``ExitStack``. One family of handlers
turns errors into ``{"error": ..., "detail": ...}`` with the status each error
carries: bad input is a 4xx, an unreachable bus or store a 503, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import Scope

from inferstream.api import (
    admin,
    analytics,
    app_routes,
    audit,
    dicomweb,
    grants,
    ingest,
    live,
    ops,
    queries,
    records,
    registry,
    retention,
    v2,
)
from inferstream.api.accounts import Accounts
from inferstream.api.audit_writer import AuditWriter
from inferstream.api.errors import ApiError
from inferstream.api.group_commit import GroupCommit
from inferstream.api.key_cache import KeyCache
from inferstream.api.live_hub import LiveHub
from inferstream.api.ratelimit import RateLimiter
from inferstream.api.served_models import GraphCache
from inferstream.api.services import Services
from inferstream.api.settings import ApiSettings
from inferstream.api.throttle import GuessThrottle
from inferstream.application import AppSpec
from inferstream.blob_crypto import open_blobs
from inferstream.bus import open_bus
from inferstream.codecs import UnsupportedContent
from inferstream.errors import (
    BlobError,
    InvalidInput,
    StoreError,
    TenantShredded,
    TransientError,
)
from inferstream.heap import settle
from inferstream.runner import ensure_topics
from inferstream.store import InvalidQuery, ResultsStore
from inferstream.store.audit import AuditLog
from inferstream.tracing import NO_TRACING, Tracing

log = logging.getLogger("inferstream.api")

#: Planner statistics are refreshed this long after start, then every STATISTICS_EVERY_S.
STATISTICS_FIRST_S = 5.0
STATISTICS_EVERY_S = 30.0


class ErrorBody(BaseModel):
    error: str
    detail: str


#: Documented on every route, so clients (and schemathesis) know the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "bad input",
        401: "no or wrong credentials",
        403: "role not allowed",
        404: "not found in your tenant",
        409: "already exists",
        413: "body too large",
        415: "unsupported content type",
        429: "rate limited",
        503: "bus or store unavailable",
    }.items()
}


#: Requests never traced: probes and scrapes, every few seconds, would bury the rest.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def create_app(settings: ApiSettings, tracing: Tracing = NO_TRACING) -> FastAPI:
    """The API for ``settings.pipeline``: its bus, store and blob store; a span per
    request when ``tracing`` is on."""
    app = FastAPI(
        title="inferstream",
        version="1",
        summary="Ingest scans, read predictions, manage tenants' users and keys.",
        lifespan=_lifespan,
        telemetry=_telemetry(tracing),
    )
    app.state.settings = settings
    for module in (ingest, dicomweb, queries, records, admin, registry, audit, analytics, grants):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(retention.router, responses=ERROR_RESPONSES)
    app_routes.mount(app, settings.application(), ERROR_RESPONSES)
    app.include_router(v2.router)
    app.include_router(ops.router)
    app.include_router(live.router)
    if settings.audit:
        app.add_middleware(audit.Record)  # inside Observe: it has the request id by then
    app.add_middleware(ops.Observe)
    app.add_middleware(ops.HeaderLimit)  # outermost: refused before anything else runs
    _add_error_handlers(app)
    _document_pipeline(app, settings, settings.application())
    return app


def _telemetry(tracing: Tracing) -> TelemetryConfig:
    """FastAPI's own server span per request (it continues a ``traceparent`` header and
    is the current span while the route runs), made by our provider; never FastAPI's
    exporter set-up, metrics or logs, so nothing of it runs with tracing off."""
    return {
        "tracer_provider": tracing.provider,
        "tracing": tracing.provider is not None,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "auto_configure": False,
        "exclude": lambda scope: scope.get("path") in UNTRACED_PATHS,
    }


def app_labels(app: AppSpec) -> frozenset[str]:
    """Every label of every head of the application (what feedback may say)."""
    return frozenset(label for head in app.heads for label in head.label_names)


def _document_pipeline(app: FastAPI, settings: ApiSettings, application: AppSpec) -> None:
    """Name this pipeline's stages and its application's heads and labels in the schema,
    so it admits only those."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            replay = schema["components"]["schemas"]["Replay"]["properties"]["stage"]
            replay["enum"] = [stage.name for stage in settings.pipeline.stages]
            feedback = schema["components"]["schemas"]["FeedbackIn"]["properties"]
            feedback["label"]["enum"] = sorted(app_labels(application))
            named = feedback["head"]["anyOf"][0]  # the string branch; null means the first
            named["enum"] = [head.name for head in application.heads]  # none: no feedback
            listing = schema["paths"]["/v1/apps/{app}/records"]["get"]
            listing["parameters"] = listing.get("parameters", []) + records.query_parameters(
                settings.application()
            )
            for path, operations in schema["paths"].items():
                if v2.speaks_v2(path):  # which answers invalid requests 400 (v2.error_response)
                    for operation in operations.values():
                        operation["responses"].pop("422", None)
            upload = schema["paths"]["/v1/scans"]["post"]["requestBody"]["content"]
            fields = upload["multipart/form-data"]["schema"]["properties"]
            fields |= {
                name: ingest.FIELD_SCHEMA for name in settings.application().client_attributes
            }
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _tenant_quota(settings: ApiSettings) -> RateLimiter | None:
    if settings.tenant_scans_per_s is None:
        return None
    return RateLimiter(settings.tenant_scans_per_s, settings.tenant_quota_burst,
                       unit="scans", whose="this tenant (its share of the pipeline)")  # fmt: skip


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ApiSettings = app.state.settings
    spec = settings.pipeline
    with ExitStack() as stack:
        bus = open_bus(spec.bus)
        stack.callback(bus.close)
        ensure_topics(bus, spec)
        bus.create_topic(settings.ingest_topic, spec.partitions(settings.ingest_topic))
        # Sync routes run on up to 40 threads; with SQLAlchemy's default pool (5 + 10
        # overflow) most requests under load opened and closed a connection of their own.
        store = ResultsStore(spec.store, pool_size=20, max_overflow=20)
        stack.callback(store.close)
        accounts = Accounts(store)
        audit_key = settings.audit_key.encode() or None
        writer = AuditWriter(AuditLog(store, audit_key), settings.audit_buffer)
        writer.start()
        stack.callback(writer.close)  # before the store closes: what is pending is written
        application = settings.application()
        shown = settings.applications()
        for app_spec in shown:
            store.register_app(app_spec)
        services = Services(
            settings=settings,
            app=application,
            apps=shown,
            bus=bus,
            store=store,
            accounts=accounts,
            throttle=GuessThrottle(accounts),
            keys=KeyCache(accounts),
            blobs=open_blobs(spec.blobs, store),
            limiter=RateLimiter(settings.rate_per_s, settings.burst),
            tenant_quota=_tenant_quota(settings),
            labels=app_labels(application),
            publisher=GroupCommit(lambda envelopes: ingest.record_and_produce(services, envelopes)),
            live=LiveHub(store, _with_views_served(shown, application), spec, bus),
            graphs=GraphCache(),
            audit=writer,
        )
        app.state.services = services
        refresher = asyncio.create_task(_refresh_statistics(store, services.throttle))
        stack.callback(refresher.cancel)
        settle()  # start-up's objects are never walked by the cycle collector again
        log.info("api ready", extra={"route": f"{spec.name}: ingest into {settings.ingest_topic}"})
        yield


async def _refresh_statistics(store: ResultsStore, throttle: GuessThrottle) -> None:
    """Keep query plans good as the store grows (see ResultsStore.refresh_statistics),
    and forget old failed sign-ins.

    Statistics taken on an almost empty table (a fresh store) mislead the planner as
    much as none, so they are refreshed every 30 s; a sampled refresh costs a few ms.
    """
    wait = STATISTICS_FIRST_S
    while True:
        await asyncio.sleep(wait)
        try:
            await run_in_threadpool(store.refresh_statistics)
            await run_in_threadpool(throttle.purge)
        except StoreError as exc:
            log.warning("planner statistics not refreshed", extra={"error": str(exc)})
        wait = STATISTICS_EVERY_S


def _error(
    request: Request, status: int, code: str, detail: Any, headers: dict[str, str] | None = None
) -> JSONResponse:
    if v2.speaks_v2(request.url.path):  # the v2 protocol has an error body of its own
        return v2.error_response(status, detail, headers)
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as strings: JSON has no numbers for them.

    The 422 answer echoes the input, and a body holding NaN or 1e999 (both parsed
    by Python's json) made the JSON encoder fail, which answered 500.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this request's path (routes asked, not read,
    since included routers wrap their routes)."""

    def served(method: str) -> bool:
        probe = {**scope, "method": method}
        return any(route.matches(probe)[0] is Match.FULL for route in app.router.routes)

    return [method for method in _METHODS if served(method)]


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _error(request, exc.status, exc.code, exc.detail, exc.headers)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return _error(request, 400, "bad_request", str(exc))

    async def unsupported(request: Request, exc: Exception) -> JSONResponse:
        return _error(request, 415, "unsupported_media_type", str(exc))

    async def shredded(request: Request, exc: Exception) -> JSONResponse:
        return _error(request, 410, "gone", str(exc))

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("dependency unavailable", extra={"error": type(exc).__name__})
        return _error(request, 503, "unavailable", str(exc), {"Retry-After": "1"})

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _error(request, 422, "invalid_request", json_safe(jsonable_encoder(exc.errors())))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route that matched
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return _error(request, exc.status_code, "http_error", str(exc.detail), headers)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(UnsupportedContent, unsupported)
    app.add_exception_handler(InvalidInput, invalid)
    app.add_exception_handler(InvalidQuery, invalid)
    app.add_exception_handler(TransientError, unavailable)
    app.add_exception_handler(BlobError, unavailable)
    app.add_exception_handler(TenantShredded, shredded)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)


def _with_views_served(shown: Sequence[AppSpec], served: AppSpec) -> list[AppSpec]:
    """The applications the live feed shows; only the served one keeps its dashboard
    views, since they read its own routes and only its routes are mounted here."""
    return [app if app.name == served.name else replace(app, views=()) for app in shown]
