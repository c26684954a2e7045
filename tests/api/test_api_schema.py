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
from inferstream.api.permissions import PERMISSIONS, ROLES


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


#: The operations whose valid inputs the schema cannot fully describe: the bytes of a
#: scan, an ONNX graph, DICOM instances in multipart/related. A schema-valid request
#: may rightly get a 4xx there, so only the "valid data is accepted" check is skipped.
#: Cursors, replay stages and targets, and feedback labels are described exactly, so
#: every other operation is held to it.
OPAQUE = {
    "POST /v1/scans",
    "POST /v1/registry/models",
    "POST /dicomweb/studies",
    "POST /dicomweb/studies/{study}",
}


@schemathesis.serializer("multipart/related")
def _related(_ctx: object, value: object) -> bytes:
    """A generated STOW-RS body is sent as it is (bytes, or text as UTF-8)."""
    return value if isinstance(value, bytes) else str(value).encode()


def _opaque(case: object) -> bool:
    return f"{case.method} {case.path}" in OPAQUE  # type: ignore[attr-defined]


@pytest.mark.parametrize(("role", "examples"), [("admin", 10), ("operator", 10),
                                                  ("viewer", 10), ("device", 10)])  # fmt: skip
def test_api_conforms_to_its_schema(schema_world: World, role: str, examples: int) -> None:
    """Every operation, called with generated requests as each role of one tenant: no
    500, no answer outside the schema; a role the matrix refuses gets its 403."""
    headers = schema_world.headers(schema_world.own, role)
    operations = _operations(schema_world)
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())  # type: ignore[attr-defined]
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: object) -> None:
            route = f"{case.method} {case.path}"  # type: ignore[attr-defined]
            allowed = role in PERMISSIONS.get(route, ROLES)
            excluded = [positive_data_acceptance] if _opaque(case) or not allowed else []
            answer = case.call_and_validate(headers=headers, excluded_checks=excluded)  # type: ignore[attr-defined]
            if not allowed:
                # (429: a refused credential that keeps trying is slowed down)
                assert answer.status_code in (403, 404, 422, 429), (route, role, answer.status_code)

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
