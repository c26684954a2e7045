"""Every route x every role x own/other tenant, driven by the permission matrix.

A route the app serves must appear in the matrix (or be public) and in CALLS below,
so a new route without a permission entry or a test call fails here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from api_testing import World, dicom_bytes, start_world
from dicom_builder import make_dataset
from fastapi.routing import APIWebSocketRoute
from starlette.routing import Route, WebSocketRoute
from test_registry import shipped

from inferstream.api import ApiSettings
from inferstream.api.permissions import PERMISSIONS, PUBLIC, ROLES, WEBSOCKETS
from inferstream.envelope import derive_id
from inferstream.registry import ModelRegistry
from inferstream.store import ResultRow

GROUP = "TRAY-0042"
#: A third tenant, grantee of the sharing grants the routes make.
LAB = f"perm-lab-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Seeded:
    """A scan (ingested and processed), a user and a key of the world's first tenant."""

    scan_id: str
    subject: str
    username: str = "victim"  # listed, never deleted
    doomed: str = "doomed"  # the user the DELETE route removes
    key_id: str = ""
    #: A private model of the tenant (versions 1 and 2, alias "pick" moved between them),
    #: and the name of its private version of the served model (egg_sexing).
    model: str = ""
    #: The tenant all of it belongs to.
    owner: str = ""
    #: A subject with a record of its own, which the erasure route erases.
    erased: str = "EGG-DOOMED"
    #: A sharing grant of the tenant's records with LAB, which the DELETE route revokes.
    grant: str = ""


Call = Callable[[Seeded], tuple[str, dict[str, Any]]]


def _dicom(_: Seeded) -> tuple[str, dict[str, Any]]:
    return "/v1/scans", {
        "content": dicom_bytes(seed=7),
        "headers": {"Content-Type": "application/dicom"},
    }


def _stow(study: bool) -> Callable[[Seeded], tuple[str, dict[str, Any]]]:
    """STOW-RS of one instance, into its study or not."""

    def call(_: Seeded) -> tuple[str, dict[str, Any]]:
        boundary = "stow-boundary"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + dicom_bytes(seed=8) + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
        kind = f'multipart/related; type="application/dicom"; boundary={boundary}'
        url = "/dicomweb/studies"
        if study:
            url += f"/{make_dataset(seed=8).StudyInstanceUID}"
        return url, {"content": body, "headers": {"Content-Type": kind}}

    return call


REPLAY = {"stage": "store", "to": "earliest"}


def _new_user() -> dict[str, str]:
    return {"username": f"u{uuid.uuid4().hex[:8]}", "password": "correct horse battery",
            "role": "viewer"}  # fmt: skip


CALLS: dict[str, Call] = {
    "POST /v1/scans": _dicom,
    "POST /dicomweb/studies": _stow(study=False),
    "POST /dicomweb/studies/{study}": _stow(study=True),
    "GET /v1/scans/{scan_id}": lambda s: (f"/v1/scans/{s.scan_id}", {}),
    "GET /v1/scans/{scan_id}/image": lambda s: (f"/v1/scans/{s.scan_id}/image", {}),
    "GET /v1/results": lambda s: (f"/v1/results?group={GROUP}", {}),
    "GET /v1/apps": lambda s: ("/v1/apps", {}),
    "GET /v1/apps/{app}": lambda s: ("/v1/apps/eggs", {}),
    "GET /v1/apps/{app}/records": lambda s: (f"/v1/apps/eggs/records?tray={GROUP}", {}),
    "GET /v1/apps/{app}/records/{record_id}": lambda s: (
        f"/v1/apps/eggs/records/{derive_id(s.scan_id, 'classify', 0)}", {}
    ),
    "GET /v1/groups/{group}/summary": lambda s: (f"/v1/groups/{GROUP}/summary", {}),
    "GET /v1/groups/{group}/export.csv": lambda s: (f"/v1/groups/{GROUP}/export.csv", {}),
    "GET /v1/models/accuracy": lambda s: ("/v1/models/accuracy", {}),
    "POST /v1/feedback": lambda s: (
        "/v1/feedback", {"json": {"subject": s.subject, "label": "male"}}
    ),
    "POST /v1/admin/replay": lambda s: ("/v1/admin/replay", {"json": REPLAY}),
    "GET /v1/models": lambda s: ("/v1/models", {}),
    "GET /v1/admin/users": lambda s: ("/v1/admin/users", {}),
    "POST /v1/admin/users": lambda s: ("/v1/admin/users", {"json": _new_user()}),
    "DELETE /v1/admin/users/{username}": lambda s: (f"/v1/admin/users/{s.doomed}", {}),
    "GET /v1/admin/keys": lambda s: ("/v1/admin/keys", {}),
    "POST /v1/admin/keys": lambda s: ("/v1/admin/keys", {"json": {"name": "k", "role": "device"}}),
    "DELETE /v1/admin/keys/{key_id}": lambda s: (f"/v1/admin/keys/{s.key_id}", {}),
    "DELETE /v1/admin/subjects/{subject}": lambda s: (f"/v1/admin/subjects/{s.erased}", {}),
    "GET /v1/admin/retention": lambda s: ("/v1/admin/retention", {}),
    "PUT /v1/admin/retention": lambda s: ("/v1/admin/retention", {"json": {"keep_days": 3650}}),
    "DELETE /v1/admin/retention": lambda s: ("/v1/admin/retention", {}),
    "POST /v1/grants": lambda s: ("/v1/grants", {"json": {
        "grantee": LAB, "app": "eggs", "expires_at": "2999-01-01T00:00:00Z",
        "conditions": [{"attribute": "tray", "equals": GROUP}], "images": False}}),
    "GET /v1/grants": lambda s: ("/v1/grants", {}),
    "DELETE /v1/grants/{grant_id}": lambda s: (f"/v1/grants/{s.grant}", {}),
    "GET /v1/whoami": lambda s: ("/v1/whoami", {}),
    "GET /v1/analytics/queries": lambda s: ("/v1/analytics/queries", {}),
    "GET /v1/analytics/queries/{name}": lambda s: ("/v1/analytics/queries/seeded", {}),
    "PUT /v1/analytics/queries/{name}": lambda s: (
        "/v1/analytics/queries/put-query", {"json": {"sql": "SELECT count(*) FROM records"}}
    ),
    "DELETE /v1/analytics/queries/{name}": lambda s: ("/v1/analytics/queries/doomed", {}),
    "GET /v1/analytics/reports/{day}": lambda s: ("/v1/analytics/reports/1970-01-01", {}),
    "GET /v1/audit": lambda s: ("/v1/audit?limit=5", {}),
    "GET /v1/audit/export": lambda s: ("/v1/audit/export?format=csv", {}),
    "GET /v1/audit/verify": lambda s: ("/v1/audit/verify", {}),
    "GET /v1/registry/models": lambda s: ("/v1/registry/models", {}),
    "GET /v1/registry/models/{name}": lambda s: (f"/v1/registry/models/{s.model}", {}),
    "GET /v1/registry/models/{name}/evaluation": lambda s: (
        f"/v1/registry/models/{s.model}/evaluation?champion=pick&challenger=pick", {}
    ),
    "GET /v1/registry/models/{name}/timeline": lambda s: (
        f"/v1/registry/models/{s.model}/timeline?hours=1", {}
    ),
    "POST /v1/registry/models": lambda s: ("/v1/registry/models", _model_upload()),
    "PUT /v1/registry/models/{name}/aliases/{alias}": lambda s: (
        f"/v1/registry/models/{s.model}/aliases/pick", {"json": {"version": "2", "reason": "r"}}
    ),
    "POST /v1/registry/models/{name}/aliases/{alias}/rollback": lambda s: (
        f"/v1/registry/models/{s.model}/aliases/pick/rollback", {"json": {"reason": "r"}}
    ),
    # The v2 protocol: the served model (every tenant's), and a private version of it
    # that only the owning tenant may name.
    "GET /v2": lambda s: ("/v2", {}),
    "GET /v2/models/{name}": lambda s: ("/v2/models/egg_sexing", {}),
    "GET /v2/models/{name}/ready": lambda s: ("/v2/models/egg_sexing/ready", {}),
    "POST /v2/models/{name}/infer": lambda s: ("/v2/models/egg_sexing/infer", _infer_body()),
    "GET /v2/models/{name}/versions/{version}": lambda s: (
        f"/v2/models/egg_sexing/versions/{s.model}", {}
    ),
    "GET /v2/models/{name}/versions/{version}/ready": lambda s: (
        f"/v2/models/egg_sexing/versions/{s.model}/ready", {}
    ),
    "POST /v2/models/{name}/versions/{version}/infer": lambda s: (
        f"/v2/models/egg_sexing/versions/{s.model}/infer", _infer_body()
    ),
}  # fmt: skip


def _infer_body() -> dict[str, Any]:
    """One blank scan for the flagship's model, as v2 JSON."""
    scan = {"name": "scan", "shape": [1, 1, 64, 64], "datatype": "FP32", "data": [0.0] * 4096}
    return {"json": {"inputs": [scan]}}


def _model_upload() -> dict[str, Any]:
    """A new private version of a model (the shipped graph), under a fresh name."""
    graph, info = shipped()
    return {
        "files": {"model": ("m.onnx", graph, "application/octet-stream")},
        "data": {"metadata": json.dumps({**info, "name": f"m{uuid.uuid4().hex[:8]}"})},
    }


def _same_tenant_check(route: str, answer: Any, seeded: Seeded) -> None:
    """What an allowed caller of the owning tenant gets."""
    assert 200 <= answer.status_code < 300, (route, answer.status_code, answer.text)
    if route in ("GET /v1/results", "GET /v1/apps/{app}/records"):
        assert [item["root_id"] for item in answer.json()["items"]] == [seeded.scan_id]
    if route == "GET /v1/apps/{app}/records/{record_id}":
        assert answer.json()["record"]["root_id"] == seeded.scan_id
    if route == "GET /v1/groups/{group}/summary":
        assert answer.json()["count"] == 1
    if route == "GET /v1/groups/{group}/export.csv":
        assert seeded.scan_id in answer.text
    if route == "GET /v1/admin/users":
        assert seeded.username in [user["username"] for user in answer.json()]
    if route == "GET /v1/admin/keys":
        assert seeded.key_id in [key["key_id"] for key in answer.json()]
    if route == "GET /v1/audit/verify":
        assert answer.json()["ok"], answer.text
    if route == "DELETE /v1/admin/subjects/{subject}":
        assert (answer.json()["subject"], answer.json()["records"]) == (seeded.erased, 1)
    _grant_check(route, answer, seeded)


def _grant_check(route: str, answer: Any, seeded: Seeded) -> None:
    """The sharing routes, to the owning tenant: its grant listed, then revoked."""
    if route == "GET /v1/grants":
        assert seeded.grant in [grant["id"] for grant in answer.json()]
    if route == "DELETE /v1/grants/{grant_id}":
        assert answer.json()["id"] == seeded.grant and answer.json()["revoked_at_us"]


def _hidden_from_others(route: str) -> bool:
    """Whether the route names something of the first tenant's (the v2 routes name the
    served model, every tenant's, and hide the tenant's own versions)."""
    if " /v2" in route:
        return "{version}" in route
    hidden = ("{scan_id}", "{username}", "{key_id}", "{record_id}", "{name}", "{day}",
              "{subject}", "{grant_id}")  # fmt: skip
    return any(name in route for name in hidden)


def _other_tenant_check(route: str, answer: Any, seeded: Seeded) -> None:
    """What an allowed caller of another tenant gets: nothing of the first tenant's."""
    if route.startswith("GET /v1/audit"):  # its own log, whose targets may name any id
        assert 200 <= answer.status_code < 300, (route, answer.status_code, answer.text)
        assert seeded.owner not in answer.text
        return
    if route == "PUT /v1/analytics/queries/{name}":  # saved among the caller's own
        assert 200 <= answer.status_code < 300, (route, answer.status_code, answer.text)
        return
    if _hidden_from_others(route):
        assert answer.status_code == 404, (route, answer.text)
        return
    assert 200 <= answer.status_code < 300, (route, answer.status_code, answer.text)
    assert seeded.scan_id not in answer.text
    assert seeded.key_id not in answer.text
    assert seeded.model not in answer.text
    if route not in ("POST /v1/admin/users", "GET /v1/whoami"):  # any name may recur
        assert seeded.username not in answer.text
        assert seeded.doomed not in answer.text
    if route != "POST /v1/feedback":  # which echoes the subject it was sent
        assert seeded.subject not in answer.text
    if route == "GET /v1/groups/{group}/summary":
        assert answer.json()["count"] == 0


@pytest.fixture(scope="module")
def seeded_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Seeded]]:
    from api_testing import JWT_SECRET

    from inferstream.apps.eggs import APP
    from inferstream.pipeline import load_pipeline

    folder = tmp_path_factory.mktemp("perm")
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{folder / 'bus.db'}",
        store=f"sqlite:///{folder / 'results.db'}",
        blobs=f"file://{folder / 'blobs'}",
    )
    analytics = str(folder / "analytics")
    settings = ApiSettings(
        spec, "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6, analytics_dir=analytics
    )
    for world in start_world(settings):
        yield world, seed(world)


def seed(world: World) -> Seeded:
    """A scan, two users, a key and private models in the world's first tenant."""
    from inferstream.api.auth import hash_password, issue_key
    from inferstream.apps.eggs import APP
    from inferstream.envelope import now_us
    from inferstream.store.sharing import Sharing

    answer = world.client.post(
        "/v1/scans",
        content=dicom_bytes(seed=1),
        headers={**world.headers(world.own, "device"), "Content-Type": "application/dicom"},
    )
    (scan_id,) = answer.json()["ids"]
    services = world.client.app.state.services  # type: ignore[attr-defined]
    for name in ("victim", "doomed"):
        services.accounts.create_user(
            world.own, name, hash_password("correct horse battery"), "viewer"
        )
    key = issue_key(services.accounts, world.own, "victim key", "device")
    registry, model = ModelRegistry(services.store, services.blobs), "private-seeded"
    graph, info = shipped()
    for version in ("1", "2"):
        registry.register(graph, {**info, "name": model, "version": version},
                          actor="seed", tenant=world.own)  # fmt: skip
        registry.set_alias(model, "pick", version, actor="seed", reason="seed",
                           tenant=world.own)  # fmt: skip
    # The served model at a private version named like the private model, so no
    # answer to another tenant may hold that name.
    registry.register(graph, {**info, "version": model}, actor="seed", tenant=world.own)
    services.accounts.create_tenant(LAB)
    grant = Sharing(services.store).grant(world.own, LAB, APP, expires_at_us=now_us() + 10**12,
                                          created_by="seed")  # fmt: skip
    seeded = Seeded(scan_id, "EGG-000001", "victim", "doomed", key.key_id, model, world.own,
                    grant=grant.id)  # fmt: skip
    doomed = dataclasses.replace(
        _result(world.own, seeded), id="doomed-record", root_id="doomed-scan",
        subject=seeded.erased, group="TRAY-DOOMED", attributes={"egg_id": seeded.erased},
    )  # fmt: skip
    services.store.upsert_results([_result(world.own, seeded), doomed])
    _seed_analytics(world, services)
    return seeded


def _seed_analytics(world: World, services: Any) -> None:
    """The store exported, two saved queries of the first tenant's and its report (when
    the world has an export folder: a world made without one answers 404 there)."""
    from inferstream.analytics.export import export
    from inferstream.analytics.report import write_report
    from inferstream.analytics.saved import SavedQueries

    if not services.settings.analytics_dir:
        return
    folder = Path(services.settings.analytics_dir)
    export(services.store, folder, settle_s=0)
    saved = SavedQueries(folder)
    for name in ("seeded", "doomed"):
        saved.save(world.own, name, "SELECT root_id, subject FROM records", "seed")
    write_report(services.store, folder, world.own, dt.date(1970, 1, 1))


def _result(tenant: str, seeded: Seeded) -> ResultRow:
    """The record the classify stage makes from the scan (its own, derived id)."""
    return ResultRow(
        id=derive_id(seeded.scan_id, "classify", 0), tenant=tenant, label="female",
        confidence=0.9, scores={"female": 0.9, "male": 0.05, "not_developing": 0.05},
        model_name="egg_sexing", model_version="1.0.0", created_at_us=1_000,
        ingested_at_us=2_000, stored_at_us=3_000, latency_ms=2.0, app="eggs",
        root_id=seeded.scan_id, parent_id=seeded.scan_id, subject=seeded.subject,
        group=GROUP, source="SCANNER-03", head="sex",
        attributes={"egg_id": seeded.subject, "tray": GROUP, "scanner": "SCANNER-03"},
    )  # fmt: skip


def _app_routes(world: World) -> list[str]:
    """Every operation the app publishes in its OpenAPI schema."""
    paths = world.client.get("/openapi.json").json()["paths"]
    return [f"{method.upper()} {path}" for path, ops in paths.items() for method in ops]


def _served(routes: list[Any]) -> Iterator[tuple[str, Any]]:
    """Every (kind, route) the app serves, inside included routers too."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _served(inner.routes)
        elif isinstance(route, WebSocketRoute | APIWebSocketRoute):
            yield "ws", route
        elif isinstance(route, Route):
            yield "http", route


def test_every_served_route_is_in_the_matrix_or_public(
    seeded_world: tuple[World, Seeded],
) -> None:
    """Also the routes left out of the OpenAPI schema, and WebSockets."""
    http: set[str] = set()
    sockets: set[str] = set()
    for kind, route in _served(list(seeded_world[0].client.app.routes)):  # type: ignore[attr-defined]
        if kind == "ws":
            sockets.add(route.path)
        else:
            http.update(f"{m} {route.path}" for m in route.methods or () if m != "HEAD")
    assert http - PUBLIC - set(PERMISSIONS) == set(), "add these routes to the matrix"
    assert sockets - set(WEBSOCKETS) == set(), "add these WebSockets to WEBSOCKETS"


def test_every_route_is_in_the_matrix_and_has_a_test_call(
    seeded_world: tuple[World, Seeded],
) -> None:
    routes = set(_app_routes(seeded_world[0]))
    assert routes - PUBLIC - set(PERMISSIONS) == set(), "add these routes to the matrix"
    assert set(PERMISSIONS) - routes == set(), "the matrix names routes the app lacks"
    assert set(PERMISSIONS) == set(CALLS), "give every guarded route a call in CALLS"


@pytest.mark.parametrize("route", sorted(PERMISSIONS))
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("caller", ["own", "other"])
def test_route_role_tenant(
    seeded_world: tuple[World, Seeded], route: str, role: str, caller: str
) -> None:
    world, seeded = seeded_world
    method, _, _ = route.partition(" ")
    url, kwargs = CALLS[route](seeded)
    tenant = world.own if caller == "own" else world.other
    headers = {**kwargs.pop("headers", {}), **world.headers(tenant, role)}
    answer = world.client.request(method, url, headers=headers, **kwargs)
    if role not in PERMISSIONS[route]:
        assert answer.status_code == 403, (route, role, answer.text)
        # The v2 protocol's error body is the message alone.
        refusal = "role" if " /v2" in route else "forbidden"
        assert answer.json()["error"].startswith(refusal), answer.text
    elif caller == "own":
        _same_tenant_check(route, answer, seeded)
    else:
        _other_tenant_check(route, answer, seeded)


@pytest.mark.parametrize("route", sorted(PERMISSIONS))
def test_route_without_credentials_is_401(seeded_world: tuple[World, Seeded], route: str) -> None:
    world, seeded = seeded_world
    method, _, _ = route.partition(" ")
    url, kwargs = CALLS[route](seeded)
    answer = world.client.request(method, url, **kwargs)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_docs_table_matches_the_matrix() -> None:
    """The core's rows and those of every installed application's own routes."""
    from importlib import metadata
    from pathlib import Path

    from inferstream.api.app_routes import served_permissions
    from inferstream.application import ENTRY_POINT_GROUP, app_named

    doc = Path(__file__).parents[2] / "docs" / "api.md"
    rows = {}
    for line in doc.read_text().splitlines():
        if line.startswith("| `") and line.count("|") == 6:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            route = cells[0].strip("`")
            rows[route] = {
                role for role, cell in zip(ROLES, cells[1:], strict=True) if cell == "yes"
            }
    # The installed applications only: other tests register throwaway ones in-process.
    installed = metadata.entry_points(group=ENTRY_POINT_GROUP)
    matrix = served_permissions(app_named(entry.name) for entry in installed)
    assert rows == {route: set(roles) for route, roles in matrix.items()}
