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
- :mod:`~inferstream.api.v2` — the v2 inference protocol (KServe, Triton) on the served
  models; :mod:`~inferstream.api.v2_tensors` its tensors,
  :mod:`~inferstream.api.served_models` which models and versions, loaded.
- :mod:`~inferstream.api.ops` — probes, metrics, JSON logs.
- :mod:`~inferstream.api.cli` — ``inferstream serve`` and ``inferstream admin``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferstream.api.app import create_app
    from inferstream.api.auth import Principal, principal_for, principal_from_token, require
    from inferstream.api.settings import ApiSettings

#: Imported when first asked for, not with the package: ``inferstream.api.cli`` (every
#: command line's parser) must not pay for FastAPI and the whole service (1.4 s).
_LAZY = {
    "create_app": "inferstream.api.app",
    "Principal": "inferstream.api.auth",
    "principal_for": "inferstream.api.auth",
    "principal_from_token": "inferstream.api.auth",
    "require": "inferstream.api.auth",
    "ApiSettings": "inferstream.api.settings",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'inferstream.api' has no attribute {name!r}")


__all__ = [
    "ApiSettings",
    "Principal",
    "create_app",
    "principal_for",
    "principal_from_token",
    "require",
]
