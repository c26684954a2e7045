"""The permission matrix of an API serving imageops: the core's rows and the routes the
application mounts, every served route in it (or public), every application route
called as every role of the owning and of another tenant."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from imageops_world import JOBS, USERS_FORM, World, imageops_spec, running_api, wait_done
from starlette.routing import Route, WebSocketRoute

from inferstream.api.app_routes import served_permissions
from inferstream.api.permissions import PERMISSIONS, PUBLIC, ROLES, WEBSOCKETS
from inferstream.apps.imageops import APP
from inferstream.apps.imageops.images import encoded
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow
MATRIX = served_permissions([APP])
OWN_ROUTES = sorted(set(MATRIX) - set(PERMISSIONS))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Any]]:
    """The world, and a job of its first tenant that is done."""
    spec = imageops_spec(tmp_path_factory.mktemp("imageops-perm"))
    with running_api(spec) as world, pipeline_threads(spec, replicas=1):
        job = world.submit([("a.png", encoded(512, 512))]).json()["job"]
        yield world, wait_done(world, job)


CALLS: dict[str, Callable[[Any], tuple[str, dict[str, Any]]]] = {
    f"POST {JOBS}": lambda status: (JOBS, {
        "files": [("files", ("a.png", encoded(512, 512)))],
        "data": {"actions": json.dumps(USERS_FORM)},
    }),
    f"GET {JOBS}/{{job}}": lambda status: (f"{JOBS}/{status['job']}", {}),
    f"GET {JOBS}/{{job}}/outputs/{{name}}": lambda status: (
        status["files"][0]["outputs"][0]["url"], {}
    ),
}  # fmt: skip


def test_the_application_declares_its_rows() -> None:
    assert sorted(CALLS) == OWN_ROUTES
    assert MATRIX[f"POST {JOBS}"] == frozenset({"admin", "operator", "device"})


def _served(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (kind, full path, route) the app serves, inside included routers too (an
    application's router is included under its prefix)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _served(inner.routes, prefix + getattr(context, "prefix", ""))
        elif isinstance(route, WebSocketRoute | APIWebSocketRoute):
            yield "ws", prefix + route.path, route
        elif isinstance(route, APIRoute | Route):
            yield "http", prefix + route.path, route


def test_every_served_route_is_in_the_matrix_or_public(seeded: tuple[World, Any]) -> None:
    world, _ = seeded
    http: set[str] = set()
    sockets: set[str] = set()
    for kind, path, route in _served(list(world.client.app.routes)):  # type: ignore[attr-defined]
        if kind == "ws":
            sockets.add(path)
        else:
            http.update(f"{m} {path}" for m in route.methods or () if m != "HEAD")
    assert set(OWN_ROUTES) <= http
    assert http - PUBLIC - set(MATRIX) == set(), "add these routes to the matrix"
    assert sockets - set(WEBSOCKETS) == set()
    schema = world.client.get("/openapi.json").json()["paths"]
    documented = {f"{m.upper()} {path}" for path, ops in schema.items() for m in ops}
    assert documented - PUBLIC == set(MATRIX), "the matrix and the served routes differ"


@pytest.mark.parametrize("route", OWN_ROUTES)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("caller", ["own", "other"])
def test_route_role_tenant(seeded: tuple[World, Any], route: str, role: str, caller: str) -> None:
    world, status = seeded
    method = route.partition(" ")[0]
    url, kwargs = CALLS[route](status)
    tenant = world.own if caller == "own" else world.other
    answer = world.client.request(method, url, headers=world.headers(role, tenant), **kwargs)
    if role not in MATRIX[route]:
        assert answer.status_code == 403, (route, role, answer.text)
    elif caller == "own" or method == "POST":
        assert answer.status_code in (200, 202), (route, role, answer.text)
    else:  # another tenant's job is not found, never forbidden
        assert answer.status_code == 404, (route, role, answer.text)
        assert status["files"][0]["outputs"][0]["sha256"] not in answer.text


@pytest.mark.parametrize("route", OWN_ROUTES)
def test_route_without_credentials_is_401(seeded: tuple[World, Any], route: str) -> None:
    world, status = seeded
    url, kwargs = CALLS[route](status)
    answer = world.client.request(route.partition(" ")[0], url, **kwargs)
    assert answer.status_code == 401
