"""Errors of the service API: each carries the HTTP status it answers with.

Routes raise these (or let our library errors through); one handler in
:mod:`inferstream.api.app` turns any of them into ``{"error": ..., "detail": ...}``
so a bad request never becomes a 500.
"""

from __future__ import annotations

from collections.abc import Mapping

from inferstream.errors import InferstreamError


class ApiError(InferstreamError):
    """An answer other than success; ``status`` is the HTTP status, ``code`` a stable name."""

    status = 400
    code = "bad_request"

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Gone(ApiError):
    """It existed, and its retention has passed (an expired output)."""

    status, code = 410, "gone"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_s)})


class Unavailable(ApiError):
    status, code = 503, "unavailable"
