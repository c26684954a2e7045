"""An application's own routes: mounted under ``/v1/apps/<name>`` with the roles it
declares as data, refused when a route has no row (or a row no route), and part of the
API's whole permission matrix."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Annotated

import pytest
from api_testing import IMAGES, World, start_world
from fastapi import APIRouter

from inferstream.api import ApiSettings
from inferstream.api.app_routes import AppRoutes, guard, load_routes, served_permissions
from inferstream.api.auth import Principal
from inferstream.api.permissions import PERMISSIONS, READ, Role
from inferstream.application import AppSpec, register_app
from inferstream.errors import ConfigError

ROWS: dict[str, frozenset[Role]] = {
    "GET /hello": READ,
    "POST /hello/{name}": frozenset({"admin"}),
}
router = APIRouter()


@router.get("/hello")
def hello(principal: Annotated[Principal, guard(ROWS, "GET /hello")]) -> dict[str, str]:
    return {"tenant": principal.tenant}


@router.post("/hello/{name}")
def hello_name(
    name: str, principal: Annotated[Principal, guard(ROWS, "POST /hello/{name}")]
) -> dict[str, str]:
    return {"name": name}


def good_routes() -> AppRoutes:
    return AppRoutes(router, ROWS)


def unguarded_routes() -> AppRoutes:
    return AppRoutes(router, {"GET /hello": READ})


def stale_routes() -> AppRoutes:
    return AppRoutes(router, {**ROWS, "DELETE /hello": READ})


def reserved_routes() -> AppRoutes:
    taken = APIRouter()
    taken.add_api_route("/records/x", hello, methods=["GET"])
    return AppRoutes(taken, {"GET /records/x": READ})


def not_routes() -> object:
    return router


GREETER = register_app(replace(IMAGES, name="greeter", routes=f"{__name__}:good_routes"))


def with_routes(name: str) -> AppSpec:
    return replace(IMAGES, name=f"greeter-{name}", routes=f"{__name__}:{name}")


@pytest.fixture
def greeter_world(settings: ApiSettings) -> Iterator[World]:
    yield from start_world(replace(settings, app=GREETER))


def test_the_routes_are_mounted_under_the_application_with_their_roles(
    greeter_world: World,
) -> None:
    world = greeter_world
    answer = world.client.get("/v1/apps/greeter/hello", headers=world.headers(world.own, "viewer"))
    assert answer.status_code == 200 and answer.json() == {"tenant": world.own}
    device = world.client.get("/v1/apps/greeter/hello", headers=world.headers(world.own, "device"))
    assert device.status_code == 403
    admin_only = "/v1/apps/greeter/hello/ada"
    operator = world.client.post(admin_only, headers=world.headers(world.own, "operator"))
    assert operator.status_code == 403
    admin = world.client.post(admin_only, headers=world.headers(world.own, "admin"))
    assert admin.status_code == 200 and admin.json() == {"name": "ada"}
    assert world.client.get("/v1/apps/greeter/hello").status_code == 401
    paths = world.client.get("/openapi.json").json()["paths"]
    assert {"/v1/apps/greeter/hello", "/v1/apps/greeter/hello/{name}"} <= set(paths)
    # The core's routes under every application still answer.
    core = world.client.get("/v1/apps/greeter", headers=world.headers(world.own, "viewer"))
    assert core.status_code == 200


def test_the_whole_matrix_holds_the_application_rows_under_its_prefix() -> None:
    matrix = served_permissions([GREETER])
    assert set(matrix) - set(PERMISSIONS) == {
        "GET /v1/apps/greeter/hello",
        "POST /v1/apps/greeter/hello/{name}",
    }
    assert matrix["POST /v1/apps/greeter/hello/{name}"] == frozenset({"admin"})
    assert served_permissions([IMAGES]) == PERMISSIONS


@pytest.mark.parametrize(
    ("hook", "says"),
    [
        ("unguarded_routes", "POST /hello/{name} have no row in its permissions"),
        ("stale_routes", "its permissions name DELETE /hello, which it lacks"),
        ("reserved_routes", "must start with '/' and not with /records"),
        ("not_routes", "returned APIRouter, expected an inferstream.api.app_routes.AppRoutes"),
    ],
)
def test_routes_that_could_slip_in_unguarded_are_refused(hook: str, says: str) -> None:
    with pytest.raises(ConfigError, match="application 'greeter-") as caught:
        load_routes(with_routes(hook))
    assert says in str(caught.value)


def test_only_the_served_application_mounts_its_routes(settings: ApiSettings) -> None:
    """An application shown beside the pipeline's (its pipeline runs elsewhere) is read
    only: its routes may ingest, and ingest goes to this pipeline's topic."""
    for world in start_world(replace(settings, also_apps=(GREETER,))):
        answer = world.client.get(
            "/v1/apps/greeter/hello", headers=world.headers(world.own, "viewer")
        )
        assert answer.status_code == 404
