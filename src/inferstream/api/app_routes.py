"""An application's own HTTP routes: declared by the application, mounted by the API.

An application names ``routes="module:function"`` in its
:class:`~inferstream.application.AppSpec`; the function returns :class:`AppRoutes`: a
FastAPI router whose paths are relative to the application's prefix
``/v1/apps/<name>``, and its rows of the permission matrix, as data
(``"METHOD /path"`` -> roles, written with the role sets of
:mod:`inferstream.api.permissions`). Each route guards itself with :func:`guard`
reading the same table, so the roles a route enforces are the ones declared.

Mounting refuses a router with a route its table lacks, or a table naming a route
the router does not serve, so nothing slips in unguarded, and a dashboard view
(``AppSpec.views``) reading a GET route the router does not serve; :func:`served_permissions`
is the whole matrix of an API (the core's rows and every mounted application's), the
one the permission tests walk. Only the application the API serves (its pipeline's)
has its routes mounted: they may ingest, and ingest goes to that pipeline's topic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute

from inferstream.api.auth import require
from inferstream.api.permissions import PERMISSIONS, Role
from inferstream.application import RESERVED_PATHS, AppSpec, load_ref
from inferstream.errors import ConfigError

RESERVED = RESERVED_PATHS


@dataclass(frozen=True)
class AppRoutes:
    """An application's router (paths relative to ``/v1/apps/<name>``) and its rows of
    the permission matrix: ``"METHOD /path"`` -> the roles allowed."""

    router: APIRouter
    permissions: Mapping[str, frozenset[Role]]


def guard(permissions: Mapping[str, frozenset[Role]], route: str) -> Any:
    """The dependency enforcing ``route``'s row of an application's ``permissions``.

    A route missing from the table is a KeyError when the module is imported.
    """
    return Depends(require(*permissions[route]))


def app_prefix(app: AppSpec) -> str:
    return f"/v1/apps/{app.name}"


def load_routes(app: AppSpec) -> AppRoutes | None:
    """The routes ``app`` declares, checked against its table; None when it has none."""
    if app.routes is None:
        return None
    what = f"application {app.name!r} routes"
    made = load_ref(app.routes, what)()
    if not isinstance(made, AppRoutes):
        raise ConfigError(
            f"{what}: {app.routes} returned {type(made).__name__}, expected an "
            "inferstream.api.app_routes.AppRoutes"
        )
    _check_table(what, made)
    _check_views(app, made)
    return made


def _served(router: APIRouter) -> set[str]:
    return {
        f"{method} {route.path}"
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
        if method != "HEAD"
    }


def _check_table(what: str, routes: AppRoutes) -> None:
    served = _served(routes.router)
    unguarded = sorted(served - set(routes.permissions))
    if unguarded:
        raise ConfigError(f"{what}: {', '.join(unguarded)} have no row in its permissions")
    missing = sorted(set(routes.permissions) - served)
    if missing:
        raise ConfigError(f"{what}: its permissions name {', '.join(missing)}, which it lacks")
    for key in served:
        path = key.partition(" ")[2]
        if not path.startswith("/") or path.startswith(RESERVED):
            raise ConfigError(
                f"{what}: {key} must start with '/' and not with {', '.join(RESERVED)}, "
                "which the core serves under every application"
            )


def _check_views(app: AppSpec, routes: AppRoutes) -> None:
    served = _served(routes.router)
    for view in app.views:
        path = view.route.partition("?")[0]
        if f"GET {path}" not in served:
            raise ConfigError(
                f"application {app.name!r}: view {view.title!r} reads GET {path}, which its "
                "routes do not serve"
            )


def mount(api: FastAPI, app: AppSpec, responses: dict[int | str, dict[str, Any]]) -> None:
    """Serve ``app``'s routes under its prefix, documented with the common errors."""
    routes = load_routes(app)
    if routes is not None:
        api.include_router(routes.router, prefix=app_prefix(app), responses=responses)


def served_permissions(apps: Iterable[AppSpec]) -> dict[str, frozenset[Role]]:
    """The whole matrix of an API mounting ``apps``' routes: the core's rows, then each
    application's under its prefix."""
    matrix = dict(PERMISSIONS)
    for app in apps:
        routes = load_routes(app)
        for key, roles in (routes.permissions if routes else {}).items():
            method, _, path = key.partition(" ")
            matrix[f"{method} {app_prefix(app)}{path}"] = roles
    return matrix
