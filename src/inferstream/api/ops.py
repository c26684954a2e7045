"""Operations: health and readiness probes, Prometheus metrics, structured JSON logs.

Request metrics are labelled by the route *template* (``/v1/scans/{scan_id}``), never
the raw path, so ids cannot blow up the number of series. Log lines are JSON with the
request id, and the scan and trace ids when a route adds them; headers, bodies and
query strings (where tokens or passwords could be) are never logged.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import Counter, Histogram
from pydantic import BaseModel

from inferstream.api.errors import Unavailable
from inferstream.metrics import LATENCY_BUCKETS, render

log = logging.getLogger("inferstream.api")
router = APIRouter(tags=["operations"])

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
    state = request.app.state
    try:
        state.bus.topics()
    except Exception as exc:  # any failure of the dependency means not ready
        raise Unavailable(f"the bus at {state.bus.url} is not reachable: {exc}") from exc
    try:
        state.accounts.ping()
    except Exception as exc:
        raise Unavailable(f"the store at {state.store.url} is not reachable: {exc}") from exc
    return Health(status="ready")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics() -> Response:
    """Prometheus metrics: the API's and, under ``inferstream up``, the workers'."""
    body, content_type = await run_in_threadpool(render)
    return Response(body, media_type=content_type)


async def observe(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Middleware: time and count each request, and log one JSON line for it."""
    started = time.monotonic()
    request.state.request_id = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex
    response = await call_next(request)
    route = getattr(request.scope.get("route"), "path", "(unmatched)")
    elapsed = time.monotonic() - started
    REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    REQUEST_SECONDS.labels(request.method, route).observe(elapsed)
    response.headers["X-Request-ID"] = request.state.request_id
    log.info(
        "request",
        extra={
            "request_id": request.state.request_id,
            "method": request.method,
            "route": route,
            "status": response.status_code,
            "ms": round(elapsed * 1000, 2),
        },
    )
    return response


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
