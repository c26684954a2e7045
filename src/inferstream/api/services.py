"""The services every route uses, in one typed object made by the app's lifespan.

Handlers get it with :func:`services_of` instead of reading an untyped
``app.state`` bag, so what each one needs is visible and checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from inferstream.api.accounts import Accounts
from inferstream.api.audit_writer import AuditWriter
from inferstream.api.errors import Unavailable
from inferstream.api.group_commit import GroupCommit
from inferstream.api.key_cache import KeyCache
from inferstream.api.live_hub import LiveHub
from inferstream.api.ratelimit import RateLimiter
from inferstream.api.served_models import GraphCache
from inferstream.api.settings import ApiSettings
from inferstream.api.throttle import GuessThrottle
from inferstream.application import AppSpec
from inferstream.blobs import BlobStore
from inferstream.bus import Bus
from inferstream.store import ResultsStore


@dataclass
class Services:
    """One API process's connections and helpers, opened once and closed on shutdown."""

    settings: ApiSettings
    #: The application the pipeline serves (its records, labels, checks).
    app: AppSpec
    #: Every application whose records this API shows: ``app`` first.
    apps: tuple[AppSpec, ...]
    bus: Bus
    store: ResultsStore
    accounts: Accounts
    throttle: GuessThrottle
    #: API keys read in the last second (:mod:`inferstream.api.key_cache`).
    keys: KeyCache
    blobs: BlobStore
    limiter: RateLimiter
    #: Scans per tenant (``ApiSettings.tenant_scans_per_s``); None when unbounded.
    tenant_quota: RateLimiter | None
    #: Every label some served model predicts (what feedback may say).
    labels: frozenset[str]
    publisher: GroupCommit
    live: LiveHub
    #: The graphs the v2 protocol has loaded, by digest (:mod:`inferstream.api.v2`).
    graphs: GraphCache
    #: Appends the audit log's entries off the request path (:mod:`.audit`).
    audit: AuditWriter

    def check_store(self) -> None:
        """:class:`Unavailable` (503 with Retry-After) unless the store answers now."""
        try:
            self.accounts.ping()
        except Exception as exc:  # any failure of the dependency means not ready
            raise Unavailable(f"the store at {self.store.url} is not reachable: {exc}") from exc


def services_of(connection: HTTPConnection) -> Services:
    """The services of the app serving ``connection`` (a request or a WebSocket)."""
    services: Services = connection.app.state.services
    return services
