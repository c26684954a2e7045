"""Which tracing a process gets, from the standard OpenTelemetry environment.

Tracing is on when an OTLP endpoint is set: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the
whole URL) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` is appended), which the
``--otlp-endpoint`` option of ``up``, ``worker`` and ``serve`` sets. ``OTEL_SDK_DISABLED=true``
or ``OTEL_TRACES_EXPORTER=none`` turn it off again. The SDK reads the rest as usual:
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and its
``_ARG``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_TIMEOUT``, ``OTEL_BSP_*``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from inferstream.errors import ConfigError, MissingExtraError
from inferstream.tracing import NO_TRACING, Tracing

#: The standard variable ``--otlp-endpoint`` sets.
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
_ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ENDPOINT_ENV)
_PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


def add_otlp_option(parser: argparse.ArgumentParser) -> None:
    """``--otlp-endpoint``, on every command that runs stages or the API."""
    parser.add_argument(
        "--otlp-endpoint", metavar="URL",
        help="export spans over OTLP/HTTP to this collector, e.g. http://localhost:4318 (the "
        "same as OTEL_EXPORTER_OTLP_ENDPOINT; default: that variable, else no tracing)",
    )  # fmt: skip


def export_to(endpoint: str | None) -> None:
    """``--otlp-endpoint URL``: the same as ``OTEL_EXPORTER_OTLP_ENDPOINT=URL``, for this
    process and every process it starts."""
    if endpoint:
        os.environ[ENDPOINT_ENV] = endpoint


def open_tracing(service: str, resource: Mapping[str, str] | None = None) -> Tracing:
    """Tracing as the environment configures it: spans exported over OTLP/HTTP when an
    endpoint is set (service ``OTEL_SERVICE_NAME``, else ``service``; ``resource`` adds
    attributes to every span of the process), else :data:`NO_TRACING`."""
    if not _configured():
        return NO_TRACING
    protocol = next((os.environ[n] for n in _PROTOCOL_ENVS if os.environ.get(n)), "")
    if protocol not in ("", "http/protobuf"):
        raise ConfigError(
            f"OTLP protocol {protocol!r} is not supported: inferstream exports spans over "
            "OTLP/HTTP; set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and the collector's "
            "HTTP port (4318)"
        )
    try:
        from inferstream.tracing_otel import OtelTracing, otlp_exporter
    except ImportError as exc:
        raise MissingExtraError("the OpenTelemetry SDK (tracing is configured)", "tracing") from exc
    return OtelTracing(otlp_exporter(), service=service, resource=resource)


def _configured() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter == "none":
        return False
    if exporter != "otlp":
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={exporter!r}: inferstream exports spans over OTLP only; "
            "unset it, or set it to otlp or none"
        )
    return any(os.environ.get(name) for name in _ENDPOINT_ENVS)
