"""The service API (FastAPI): ingest, queries, security and observability.

Reading guide:

- :mod:`~inferstream.api.app` — :func:`create_app`, the lifespan and error handling.
- :mod:`~inferstream.api.settings` — :class:`ApiSettings`, the one frozen settings object.
- :mod:`~inferstream.api.permissions` — the permission matrix (route -> roles).
- :mod:`~inferstream.api.auth` — API keys, password login, JWTs, :func:`require`.
- :mod:`~inferstream.api.accounts` — tenants, users, keys and accepted scans in the store.
- :mod:`~inferstream.api.ingest` — ``POST /v1/scans`` (checks through :mod:`inferstream.codecs`).
- :mod:`~inferstream.api.queries` — the read side.
- :mod:`~inferstream.api.admin` — login, users, keys, replay.
- :mod:`~inferstream.api.ops` — probes, metrics, JSON logs.
- :mod:`~inferstream.api.cli` — ``inferstream serve`` and ``inferstream admin``.
"""

from __future__ import annotations

from inferstream.api.app import create_app
from inferstream.api.auth import Principal, principal_for, principal_from_token, require
from inferstream.api.settings import ApiSettings

__all__ = [
    "ApiSettings",
    "Principal",
    "create_app",
    "principal_for",
    "principal_from_token",
    "require",
]
