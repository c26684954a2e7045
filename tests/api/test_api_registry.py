"""The model registry over the API: a tenant sees the deployment's models and its own,
operators register private versions and move their own aliases (with an audit entry
naming them), viewers and devices may not, and another tenant sees none of it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

from api_testing import World
from test_registry import relabelled, shipped

from inferstream.registry import ModelRegistry


def _registry(world: World) -> ModelRegistry:
    services: Any = world.client.app.state.services  # type: ignore[attr-defined]
    return ModelRegistry(services.store, services.blobs)


TRUTHS = ("female", "male", "not_developing")


def _champion_and_challenger(world: World) -> ModelRegistry:
    """egg_sexing 1.0.0 @champion and 1.1.0 (other labels) @challenger."""
    registry = _registry(world)
    registry.register(*shipped(), actor="cli:ops")
    registry.register(*relabelled("1.1.0"), actor="cli:ops")
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="cli:ops", reason="r")
    registry.set_alias("egg_sexing", "challenger", "1.1.0", actor="cli:ops", reason="r")
    return registry


def _score(
    world: World,
    count: int,
    *,
    truth: Callable[[int], str],
    shadow: Callable[[int], str],
    at_us: Callable[[int], int] = lambda i: i,
    confidences: tuple[float, float] = (0.9, 0.9),
    labelled: Callable[[int], bool] = lambda i: True,
) -> None:
    """``count`` records of the own tenant, each scored right by 1.0.0 (acting) and as
    ``shadow`` says by 1.1.0 (shadow), labelled where ``labelled`` says."""
    import dataclasses

    from inferstream.store import ResultRow

    store: Any = world.client.app.state.services.store  # type: ignore[attr-defined]
    rows, preds = [], []
    for i in range(count):
        at = at_us(i)
        row = ResultRow(
            id=f"r{i}", tenant=world.own, label=truth(i), confidence=confidences[0], scores={},
            model_name="egg_sexing", model_version="1.0.0", created_at_us=at,
            ingested_at_us=at, stored_at_us=at, latency_ms=1.0, app="eggs",
            subject=f"EGG-{i}", head="sex",
        )  # fmt: skip
        rows.append(row)
        preds += [row.champion(), dataclasses.replace(
            row.champion(), role="shadow", model_version="1.1.0", label=shadow(i),
            confidence=confidences[1],
        )]  # fmt: skip
        if labelled(i):
            store.add_feedback(world.own, f"EGG-{i}", truth(i), app="eggs", head="sex")
    store.write_batch(results=rows, predictions=preds)


def _upload(graph: bytes, info: dict[str, Any], reason: str = "") -> dict[str, Any]:
    return {
        "files": {"model": ("m.onnx", graph, "application/octet-stream")},
        "data": {"metadata": json.dumps(info), "reason": reason},
    }


def test_a_tenant_registers_and_moves_its_own_and_sees_the_deployments(world: World) -> None:
    registry = _registry(world)
    registry.register(*shipped(), actor="cli:ops")
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="cli:ops", reason="shipped")
    operator, viewer = world.headers(world.own, "operator"), world.headers(world.own, "viewer")
    made = world.client.post(
        "/v1/registry/models", headers=operator, **_upload(*relabelled("2.0.0-own"), "retrained")
    )
    assert made.status_code == 201, made.text
    assert made.json()["owner"] == world.own and made.json()["version"] == "2.0.0-own"
    again = world.client.post(
        "/v1/registry/models",
        headers=operator,
        **_upload(b"other bytes", relabelled("2.0.0-own")[1]),
    )
    assert again.status_code == 409 and "other bytes" in again.json()["detail"]
    url = "/v1/registry/models/egg_sexing/aliases/challenger"
    moved = world.client.put(url, headers=operator, json={"version": "2.0.0-own", "reason": "try"})
    assert moved.status_code == 200, moved.text
    listed = {
        m["version"]: m for m in world.client.get("/v1/registry/models", headers=viewer).json()
    }
    assert set(listed) == {"1.0.0", "2.0.0-own"}
    assert listed["1.0.0"]["aliases"] == ["champion"] and listed["2.0.0-own"]["aliases"] == [
        "challenger"
    ]
    shown = world.client.get("/v1/registry/models/egg_sexing", headers=viewer).json()
    actors = [(e["action"], e["actor"]) for e in shown["history"]]
    assert any(a == "alias" and who.startswith(f"{world.own}/") for a, who in actors)
    # The other tenant sees the deployment's model only, and cannot touch ours.
    theirs = world.headers(world.other, "operator")
    seen = world.client.get("/v1/registry/models", headers=theirs).json()
    assert [m["version"] for m in seen] == ["1.0.0"]
    refused = world.client.put(url, headers=theirs, json={"version": "2.0.0-own", "reason": "x"})
    assert refused.status_code == 404 and "no version '2.0.0-own'" in refused.json()["detail"]
    # Workers serve the deployment's alias: the tenant's moves never change it.
    assert registry.resolve("egg_sexing", "champion").version == "1.0.0"


def test_roles_and_bad_requests(world: World) -> None:
    registry = _registry(world)
    registry.register(*shipped(), actor="cli:ops")
    url = "/v1/registry/models/egg_sexing/aliases/champion"
    body = {"version": "1.0.0", "reason": "r"}
    for role in ("viewer", "device"):
        answer = world.client.put(url, headers=world.headers(world.own, role), json=body)
        assert answer.status_code == 403
    assert (
        world.client.get(
            "/v1/registry/models", headers=world.headers(world.own, "device")
        ).status_code
        == 403
    )
    operator = world.headers(world.own, "operator")
    assert world.client.put(url, headers=operator, json={"version": "1.0.0"}).status_code == 422
    blank = world.client.put(url, headers=operator, json={"version": "1.0.0", "reason": " \t"})
    assert blank.status_code == 422
    bad_alias = world.client.put(
        "/v1/registry/models/egg_sexing/aliases/Big!", headers=operator, json=body
    )
    assert bad_alias.status_code == 422
    nothing = world.client.post(f"{url}/rollback", headers=operator, json={"reason": "r"})
    assert nothing.status_code == 404 and "no alias" in nothing.json()["detail"]
    assert world.client.put(url, headers=operator, json=body).status_code == 200
    rollback = world.client.post(f"{url}/rollback", headers=operator, json={"reason": "r"})
    assert rollback.status_code == 409 and "no earlier version" in rollback.json()["detail"]
    broken = world.client.post(
        "/v1/registry/models",
        headers=operator,
        **_upload(b"nonsense", {**shipped()[1], "version": "3"}),
    )
    assert broken.status_code == 400 and "ONNX Runtime cannot load it" in broken.json()["detail"]
    no_file = world.client.post("/v1/registry/models", headers=operator, data={"metadata": "{}"})
    assert no_file.status_code in (400, 415)
    missing = world.client.get("/v1/registry/models/nope", headers=operator)
    assert missing.status_code == 404


def test_the_evaluation_pairs_versions_on_the_tenants_labels(world: World) -> None:
    registry = _champion_and_challenger(world)

    def shadow(i: int) -> str:  # right on a third: the champion is right on every one
        truth = TRUTHS[i % 3]
        return truth if i % 3 == 0 else "female" if truth != "female" else "male"

    _score(world, 30, truth=lambda i: TRUTHS[i % 3], shadow=shadow)
    url = "/v1/registry/models/egg_sexing/evaluation?min_labels=10"
    answer = world.client.get(url, headers=world.headers(world.own, "viewer"))
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["labelled"], report["champion_correct"], report["challenger_correct"]) == (
        30, 30, 10,
    )  # fmt: skip
    assert report["decision"] == "keep" and report["applied"] is False
    assert registry.resolve("egg_sexing", "champion").version == "1.0.0"
    theirs = world.client.get(url, headers=world.headers(world.other, "viewer")).json()
    assert theirs["labelled"] == 0 and theirs["decision"] == "wait"  # none of our labels
    bad = world.client.get(f"{url}&alpha=2", headers=world.headers(world.own, "viewer"))
    assert bad.status_code == 422


def test_the_timeline_draws_each_version_over_time_with_the_registrys_events(
    world: World,
) -> None:
    from inferstream.envelope import now_us
    from inferstream.registry import Switch

    registry = _champion_and_challenger(world)
    start = now_us() - 40 * 60_000_000  # 40 records a minute apart, the last a minute ago
    _score(
        world, 40, truth=lambda i: TRUTHS[i % 2],
        shadow=lambda i: "male" if i % 2 == 0 else "female",  # always wrong
        at_us=lambda i: start + i * 60_000_000, confidences=(0.8, 0.6),
        labelled=lambda i: i < 20,  # labels have arrived for the first half only
    )  # fmt: skip
    registry.record_switch(Switch(
        at_us=start + 30 * 60_000_000, pipeline="eggs", stage="classify", worker="w1",
        name="egg_sexing", alias="champion", from_version="0.9.0", to_version="1.0.0",
        positions={"scans.raw": {"0": 17}},
    ))  # fmt: skip
    url = "/v1/registry/models/egg_sexing/timeline?hours=2&points=4"
    answer = world.client.get(url, headers=world.headers(world.own, "viewer"))
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["bucket_s"] in (585, 586)  # 39 minutes in 4 whole-second buckets
    by = {(b["version"], b["role"]): [] for b in got["buckets"]}
    for b in got["buckets"]:
        by[(b["version"], b["role"])].append(b)
    assert set(by) == {("1.0.0", "champion"), ("1.1.0", "shadow")}
    assert sum(b["scored"] for b in by[("1.0.0", "champion")]) == 40
    champion, shadow = by[("1.0.0", "champion")], by[("1.1.0", "shadow")]
    assert sum(b["labelled"] for b in champion) == sum(b["labelled"] for b in shadow) == 20
    assert {b["accuracy"] for b in champion if b["labelled"]} == {1.0}
    assert {b["accuracy"] for b in shadow if b["labelled"]} == {0.0}
    assert champion[-1]["accuracy"] is None  # no labels yet: the confidence is the estimate
    assert {b["mean_confidence"] for b in champion} == {0.8}
    names = {s["name"] for s in got["series"]}
    assert "1.0.0 (champion) accuracy" in names and "1.1.0 (shadow) mean confidence" in names
    kinds = [(e["kind"], e["text"]) for e in got["events"]]
    assert ("switch", "w1 (eggs/classify) serves @champion 0.9.0 -> 1.0.0") in kinds
    assert any(kind == "alias" and "@challenger" in text for kind, text in kinds)
    theirs = world.client.get(url, headers=world.headers(world.other, "viewer")).json()
    assert theirs["series"] == [] and theirs["buckets"] == []  # none of our records
    viewer = world.headers(world.own, "viewer")
    assert world.client.get(url.replace("egg_sexing", "nope"), headers=viewer).status_code == 404


#: White space to one engine or another: ECMAScript's \s (the schema's reading), Unicode's
#: White_Space (the API's Rust regex) and Python's str.isspace (hypothesis's reading).
WHITE_SPACE = (
    " \t\n\v\f\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def test_a_blank_reason_is_refused_by_the_api_and_by_its_schema(world: World) -> None:
    """A reason the published schema allows is one the API takes (schemathesis once sent
    U+0085, which ECMAScript's \\s leaves out, and got a 422): each white-space character
    is refused by the API and by the schema's pattern read as ECMAScript (node) reads it."""
    url = "/v1/registry/models/egg_sexing/aliases/champion"
    operator = world.headers(world.own, "operator")
    for char in WHITE_SPACE:
        answer = world.client.put(url, headers=operator, json={"version": "1", "reason": char})
        assert answer.status_code == 422, f"U+{ord(char):04X}"
    schema = world.client.get("/openapi.json").json()["components"]["schemas"]
    pattern = schema["AliasMove"]["properties"]["reason"]["pattern"]
    script = (
        "const re = new RegExp(process.argv[1], 'u');"
        "const hits = [...process.argv[2]].filter(c => re.test(c));"
        "console.log(JSON.stringify(hits.map(c => c.codePointAt(0))));"
    )
    node = subprocess.run(
        ["node", "-e", script, pattern, WHITE_SPACE + "a\u00e9"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(node.stdout) == [ord("a"), 0xE9]
