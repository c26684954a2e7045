"""The service API's settings: one frozen object, built from a pipeline file.

TLS is not here: it belongs to the server (``inferstream serve --certfile --keyfile``).
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field

from inferstream.analytics.export import ANALYTICS_DIR_ENV
from inferstream.application import AppSpec, app_named
from inferstream.errors import ConfigError
from inferstream.pipeline import PipelineSpec
from inferstream.store.audit import AUDIT_KEY_ENV
from inferstream.tracing import TRACE_URL_ENV, check_trace_url

#: Environment variable holding the JWT signing secret (shared by every API replica).
JWT_SECRET_ENV = "INFERSTREAM_JWT_SECRET"
#: Working (unrevoked) API keys one tenant may hold: enough for every scanner of a
#: site, few enough that a leaked admin credential cannot fill the table.
MAX_ACTIVE_KEYS = 1000


@dataclass(frozen=True)
class ApiSettings:
    """What :func:`inferstream.api.create_app` needs.

    ``rate_per_s``/``burst`` are the token bucket of each caller (API key or user).
    ``tenant_scans_per_s``/``tenant_burst`` bound the scans one tenant may send, all its
    credentials together (its share of the pipeline; off when None): beyond it the
    tenant hears 429 with Retry-After and its clients retry, so a tenant flooding the
    service cannot fill the bus ahead of the others' scans.
    ``max_body_bytes`` bounds every request body; ``max_batch`` the envelopes of one
    protobuf batch, the files of one multipart upload and the batch of one v2 inference
    request; ``max_keys`` the working API keys of one tenant.
    """

    pipeline: PipelineSpec
    ingest_topic: str
    jwt_secret: str
    jwt_issuer: str = "inferstream"
    token_ttl_s: int = 900
    max_body_bytes: int = 64 * 1024 * 1024
    max_batch: int = 1000
    rate_per_s: float = 200.0
    burst: int = 400
    max_image_side: int = 4096
    max_image_pixels: int = 50_000_000
    max_keys: int = MAX_ACTIVE_KEYS
    tenant_scans_per_s: float | None = None
    #: Default: two seconds of the tenant's rate, and never less than one whole batch.
    tenant_burst: int | None = None
    #: The application served; by default the one the pipeline file names (``app:``).
    app: AppSpec | None = None
    #: Further applications whose records this API shows (read side and dashboard):
    #: their pipelines run elsewhere and write to the same store.
    also_apps: tuple[AppSpec, ...] = ()
    #: The trace viewer's page of a trace, ``{trace_id}`` in it (``GET`` of a record
    #: links its trace there); "" for none.
    trace_url: str = ""
    #: The analytics export folder the saved queries run over (``inferstream analytics
    #: export --to``; ``INFERSTREAM_ANALYTICS_DIR``); "" for none.
    analytics_dir: str = field(default_factory=lambda: os.environ.get(ANALYTICS_DIR_ENV, ""))
    #: The key of the audit chain heads' HMAC (``INFERSTREAM_AUDIT_KEY``); without it a
    #: database admin who recomputes a whole chain is not caught (``docs/audit.md``).
    audit_key: str = ""
    #: Audit entries kept in memory while the store is down, before requests get 503.
    audit_buffer: int = 100_000
    #: Record an entry per request. Off only to measure what the audit costs.
    audit: bool = True

    def __post_init__(self) -> None:
        check_trace_url(self.trace_url)
        if self.audit_buffer < 1:
            raise ConfigError(f"audit_buffer must be positive, not {self.audit_buffer}")
        if len(self.jwt_secret) < 32:
            raise ConfigError(
                f"the JWT secret is {len(self.jwt_secret)} characters; use at least 32 "
                f"random ones (set {JWT_SECRET_ENV}, e.g. from `openssl rand -hex 32`)"
            )
        if self.rate_per_s <= 0 or self.burst < 1 or self.max_body_bytes < 1:
            raise ConfigError("rate_per_s, burst and max_body_bytes must be positive")
        if self.tenant_scans_per_s is not None and self.tenant_scans_per_s <= 0:
            raise ConfigError(f"tenant scans/s must be positive, not {self.tenant_scans_per_s}")
        if self.tenant_burst is not None and self.tenant_burst < self.max_batch:
            raise ConfigError(
                f"a tenant's burst of {self.tenant_burst} scans is smaller than one batch "
                f"({self.max_batch}), which could then never be accepted; raise it"
            )

    @property
    def tenant_quota_burst(self) -> int:
        """The scans a tenant may send at once (see ``tenant_burst``)."""
        if self.tenant_burst is not None:
            return self.tenant_burst
        return max(self.max_batch, math.ceil(2 * (self.tenant_scans_per_s or 0)))

    def application(self) -> AppSpec:
        """The application this API serves: given, or named by the pipeline file."""
        if self.app is not None:
            return self.app
        if not self.pipeline.app:
            raise ConfigError(
                f"pipeline {self.pipeline.name!r} names no application; add 'app: NAME' "
                "to the pipeline file (the API needs its records, labels and checks)"
            )
        return app_named(self.pipeline.app).with_settings(self.pipeline.settings)

    def applications(self) -> tuple[AppSpec, ...]:
        """Every application shown: the pipeline's first, then the others, each once."""
        served = self.application()
        return (served, *(app for app in self.also_apps if app.name != served.name))

    @classmethod
    def for_pipeline(cls, spec: PipelineSpec, ingest_topic: str | None = None) -> ApiSettings:
        """Settings for ``spec``: ingest into its first declared topic, secret and trace
        viewer (``INFERSTREAM_TRACE_URL``) from the env.

        Without ``INFERSTREAM_JWT_SECRET`` a random secret is made, so tokens die with
        the process and replicas do not accept each other's: fine for one machine.
        """
        topic = ingest_topic or next(iter(spec.topics), None)
        if topic is None:
            raise ConfigError(
                f"pipeline {spec.name!r} declares no ingest topic; add one under 'topics:'"
            )
        secret = os.environ.get(JWT_SECRET_ENV) or secrets.token_hex(32)
        trace_url = os.environ.get(TRACE_URL_ENV, "")
        return cls(pipeline=spec, ingest_topic=topic, jwt_secret=secret, trace_url=trace_url,
                   audit_key=os.environ.get(AUDIT_KEY_ENV, ""))  # fmt: skip
