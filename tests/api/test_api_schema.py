"""schemathesis against the OpenAPI schema: generated requests never get a 500 or an
answer that breaks the schema; and /metrics passes ``promtool check metrics``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
import schemathesis
from api_testing import World, start_world
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from inferstream.api import ApiSettings


@pytest.fixture(scope="module")
def schema_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from api_testing import JWT_SECRET

    from inferstream.apps.eggs import APP
    from inferstream.pipeline import load_pipeline

    folder = tmp_path_factory.mktemp("schema")
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{folder / 'bus.db'}",
        store=f"sqlite:///{folder / 'results.db'}",
        blobs=f"file://{folder / 'blobs'}",
    )
    yield from start_world(ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6))


def _operations(world: World) -> list[object]:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", world.client.app)
    return [result.ok() for result in loaded.get_all_operations()]


#: The one operation whose valid inputs the schema cannot fully describe: the bytes
#: of a scan. A schema-valid request may rightly get a 400 there, so only the "valid
#: data is accepted" check is skipped. Cursors, replay stages and targets, and
#: feedback labels are described exactly, so every other operation is held to it.
OPAQUE = {"POST /v1/scans"}


def _opaque(case: object) -> bool:
    return f"{case.method} {case.path}" in OPAQUE  # type: ignore[attr-defined]


def test_api_conforms_to_its_schema(schema_world: World) -> None:
    """Every operation, 25 generated cases each, called as an admin of one tenant."""
    headers = schema_world.headers(schema_world.own, "admin")
    operations = _operations(schema_world)
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())  # type: ignore[attr-defined]
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: object) -> None:
            excluded = [positive_data_acceptance] if _opaque(case) else []
            case.call_and_validate(headers=headers, excluded_checks=excluded)  # type: ignore[attr-defined]

        check()


def test_metrics_pass_promtool(schema_world: World) -> None:
    schema_world.client.get("/healthz")
    schema_world.client.get("/v1/whoami", headers=schema_world.headers(schema_world.own, "viewer"))
    answer = schema_world.client.get("/metrics")
    assert answer.status_code == 200
    text = answer.text
    assert 'inferstream_api_requests_total{method="GET",route="/v1/whoami",status="200"}' in text
    assert "inferstream_api_request_seconds_bucket" in text
    promtool = shutil.which("promtool")
    assert promtool is not None, "install promtool: apt-get install -y prometheus"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=answer.content, capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
