"""``/v1/admin/retention``: an admin reads, sets and clears the tenant's own retention
policy, audited; other roles are refused, other tenants untouched, bad input a precise
422."""

from __future__ import annotations

import json
from typing import Any

from api_testing import World

from inferstream.store.retention import CLEAR_ACTION, SET_ACTION, get_policy

ROUTE = "/v1/admin/retention"


def _actions(world: World, tenant: str) -> list[tuple[str, str, int]]:
    services: Any = world.client.app.state.services  # type: ignore[attr-defined]
    services.audit.flush()
    entries = services.audit.log.entries(tenant)
    return [(s.entry.action, s.entry.target, s.entry.status) for s in entries]


def test_an_admin_sets_reads_and_clears_the_tenants_policy(world: World) -> None:
    admin = world.headers(world.own, "admin")
    for role in ("operator", "viewer", "device"):
        refused = world.headers(world.own, role)
        for method in ("GET", "PUT", "DELETE"):
            answer = world.client.request(method, ROUTE, headers=refused, json={"keep_days": 5})
            assert answer.status_code == 403, (role, method, answer.text)
    none = world.client.get(ROUTE, headers=admin)
    assert none.status_code == 200 and none.json()["keep_days"] is None

    answer = world.client.put(ROUTE, headers=admin, json={"keep_days": 30})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["tenant"], body["keep_days"]) == (world.own, 30)
    assert body["set_by"].startswith("key:") and body["set_at_us"] > 0
    assert world.client.get(ROUTE, headers=admin).json() == body
    services: Any = world.client.app.state.services  # type: ignore[attr-defined]
    stored = get_policy(services.store, world.own)
    assert stored is not None and stored.keep_days == 30
    # The other tenant's admin sees and sets only its own.
    other = world.headers(world.other, "admin")
    assert world.client.get(ROUTE, headers=other).json()["keep_days"] is None
    assert world.client.put(ROUTE, headers=other, json={"keep_days": 400}).status_code == 200
    assert world.client.get(ROUTE, headers=admin).json()["keep_days"] == 30

    assert world.client.delete(ROUTE, headers=admin).status_code == 204
    assert world.client.get(ROUTE, headers=admin).json()["keep_days"] is None
    assert world.client.delete(ROUTE, headers=admin).status_code == 204  # harmless again
    assert get_policy(services.store, world.other).keep_days == 400  # type: ignore[union-attr]

    actions = _actions(world, world.own)
    changes = [(a, json.loads(t)) for a, t, _ in actions if a in (SET_ACTION, CLEAR_ACTION)]
    assert changes == [(SET_ACTION, {"keep_days": 30}), (CLEAR_ACTION, {"keep_days": 30})]
    requests = [(a, s) for a, _, s in actions if a.endswith(ROUTE)]
    assert ("PUT /v1/admin/retention", 200) in requests
    assert ("DELETE /v1/admin/retention", 403) in requests


#: Bodies of PUT and what the 422 says of each.
BAD = [
    ({"keep_days": 0}, "greater than or equal to 1"),
    ({"keep_days": 36501}, "less than or equal to 36500"),
    ({"keep_days": "30"}, "valid integer"),
    ({"keep_days": 30.5}, "valid integer"),
    ({"keep_days": True}, "valid integer"),
    ({"keep_days": None}, "valid integer"),
    ({}, "Field required"),
    ({"keep_days": 30, "keep_for": 2}, "Extra inputs are not permitted"),
    ([30], "valid dictionary"),
]


def test_bad_input_is_a_precise_422(world: World) -> None:
    admin = world.headers(world.own, "admin")
    for body, problem in BAD:
        answer = world.client.put(ROUTE, headers=admin, json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["error"] == "invalid_request" and problem in answer.text, body
    answer = world.client.put(
        ROUTE, headers={**admin, "Content-Type": "application/json"}, content=b"keep_days=30"
    )
    assert answer.status_code == 422 and "JSON" in answer.text
    assert world.client.get(ROUTE, headers=admin).json()["keep_days"] is None
    whole = world.client.put(ROUTE, headers=admin, json={"keep_days": 30.0})  # JSON's 30
    assert whole.status_code == 200 and whole.json()["keep_days"] == 30
