"""Operations: health and readiness probes, Prometheus metrics, structured JSON logs.

Request metrics are labelled by the route *template* (``/v1/scans/{scan_id}``), never
the raw path, so ids cannot blow up the number of series. Log lines are JSON with the
request id, the trace id when tracing is on, and the scan id when a route adds it;
headers, bodies and query strings (where tokens or passwords could be) are never logged.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import Counter, Histogram
from pydantic import BaseModel
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferstream.api.errors import Unavailable
from inferstream.api.lag import lag_exposition
from inferstream.api.services import services_of
from inferstream.metrics import LATENCY_BUCKETS, render
from inferstream.tracing import current_trace_hex

log = logging.getLogger("inferstream.api")
router = APIRouter(tags=["operations"])
# Request ids only tell requests apart in logs; they grant nothing, so no CSPRNG.
_rng = random.Random()

REQUESTS = Counter(
    "inferstream_api_requests", "API requests answered", ("method", "route", "status")
)
REQUEST_SECONDS = Histogram(
    "inferstream_api_request_seconds",
    "Time to answer an API request",
    ("method", "route"),
    buckets=LATENCY_BUCKETS,
)
_LOG_FIELDS = ("request_id", "scan_id", "trace_id", "method", "route", "status", "ms",
               "subject", "tenant", "group", "to", "error")  # fmt: skip


class Health(BaseModel):
    status: str


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (no dependency is checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "not ready"}})
def readyz(request: Request) -> Health:
    """The bus and the store answer; 503 otherwise, so a balancer stops sending traffic."""
    state = services_of(request)
    try:
        state.bus.topics()
    except Exception as exc:  # any failure of the dependency means not ready
        raise Unavailable(f"the bus at {state.bus.url} is not reachable: {exc}") from exc
    state.check_store()
    return Health(status="ready")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: the API's and, under ``inferstream up``, the workers'; and the
    consumer lag of every stage, per partition, read from the bus now (:mod:`.lag`)."""
    state = services_of(request)
    body, content_type = await run_in_threadpool(render)
    lag = await run_in_threadpool(lag_exposition, state.settings.pipeline, state.bus)
    return Response(body + lag, media_type=content_type)


class Observe:
    """ASGI middleware: time and count each request, tag it with an id, log one JSON line.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    runs every response through an extra task and memory stream, which was about a
    tenth of the API's CPU under the read benchmark (bench/api_bench.py).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # what the client gets when the app fails before answering

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_tagged)
        finally:
            _record(scope, status, time.monotonic() - started, request_id)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and value:
            return str(value[:64].decode("latin-1"))
    # uuid4's urandom system call was 2 % of the CPU under the read benchmark.
    return f"{_rng.getrandbits(128):032x}"


def _record(scope: Scope, status: int, elapsed: float, request_id: str) -> None:
    method = scope["method"]
    route = getattr(scope.get("route"), "path", "(unmatched)")
    REQUESTS.labels(method, route, str(status)).inc()
    REQUEST_SECONDS.labels(method, route).observe(elapsed)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": method,
                "route": route,
                "status": status,
                "ms": round(elapsed * 1000, 2),
                "trace_id": current_trace_hex(),  # None (left out) with tracing off
            },
        )


#: Request header bytes the API reads (names and values, all headers together).
MAX_HEADER_BYTES = 32 * 1024
#: What uvicorn is told to buffer before it gives up on a request's head: far above
#: MAX_HEADER_BYTES, so a too-large head is read whole and answered 431 by
#: :class:`HeaderLimit`, instead of h11 closing on a client still sending (a reset).
SERVER_HEAD_BYTES = 1024 * 1024
#: uvicorn settings every way of serving the API shares (``serve`` and the tests).
UVICORN_OPTIONS: dict[str, Any] = {
    "http": "h11",
    "h11_max_incomplete_event_size": SERVER_HEAD_BYTES,
    # uvicorn's own access log would print raw query strings; ours logs route templates.
    "access_log": False,
    "log_config": None,
    # The sans-I/O websockets implementation; the legacy one is deprecated.
    "ws": "websockets-sansio",
}


class HeaderLimit:
    """ASGI middleware: a request whose headers exceed ``limit`` bytes gets 431."""

    def __init__(self, app: ASGIApp, limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = sum(len(name) + len(value) for name, value in scope.get("headers", ()))
        if scope["type"] != "http" or size <= self.limit:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": "request_header_fields_too_large",
                "detail": f"request headers are {size} bytes, over the limit of {self.limit}",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 431,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the known extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _LOG_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def use_json_logs(level: int = logging.INFO) -> None:
    """Send every log record to stderr as JSON lines (the ``serve`` command does this)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
