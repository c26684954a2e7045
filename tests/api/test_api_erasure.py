"""``DELETE /v1/admin/subjects/{subject}``: an admin erases one subject of their tenant;
its scans and records answer 404 afterwards, another subject's and tenant's do not."""

from __future__ import annotations

import json
from typing import Any

from api_testing import World, dicom_bytes

from inferstream.envelope import derive_id
from inferstream.store import ResultRow

ACTION = "erase subject"


def _send(world: World, tenant: str, seed: int) -> str:
    answer = world.client.post(
        "/v1/scans",
        content=dicom_bytes(seed=seed),
        headers={**world.headers(tenant, "device"), "Content-Type": "application/dicom"},
    )
    assert answer.status_code == 202, answer.text
    (scan_id,) = answer.json()["ids"]
    return str(scan_id)


def _record(tenant: str, scan_id: str, subject: str) -> ResultRow:
    """The record the classify stage would make of the scan."""
    return ResultRow(
        id=derive_id(scan_id, "classify", 0), tenant=tenant, label="female", confidence=0.9,
        scores={"female": 0.9, "male": 0.05, "not_developing": 0.05}, model_name="egg_sexing",
        model_version="1.0.0", created_at_us=1_000, ingested_at_us=2_000, stored_at_us=3_000,
        latency_ms=2.0, app="eggs", root_id=scan_id, parent_id=scan_id, subject=subject,
        group="TRAY-0042", head="sex", attributes={"egg_id": subject},
    )  # fmt: skip


def _seed(world: World) -> dict[tuple[str, str], str]:
    """Scans of eggs 1 and 2 in the first tenant, of egg 1 (same bytes) in the other, each
    with its record: the scan id of each (tenant, subject)."""
    services: Any = world.client.app.state.services  # type: ignore[attr-defined]
    scans = {
        (world.own, "EGG-000001"): _send(world, world.own, 1),
        (world.own, "EGG-000002"): _send(world, world.own, 2),
        (world.other, "EGG-000001"): _send(world, world.other, 1),
    }
    services.store.upsert_results([_record(t, s, subject) for (t, subject), s in scans.items()])
    return scans


def test_an_admin_erases_one_subject_of_their_tenant(world: World) -> None:
    scans = _seed(world)
    admin = world.headers(world.own, "admin")
    for role in ("operator", "viewer", "device"):
        refused = world.client.delete(
            "/v1/admin/subjects/EGG-000001", headers=world.headers(world.own, role)
        )
        assert refused.status_code == 403, (role, refused.text)
    unknown = world.client.delete("/v1/admin/subjects/EGG-999999", headers=admin)
    assert unknown.status_code == 404 and "EGG-999999" in unknown.json()["detail"]

    answer = world.client.delete("/v1/admin/subjects/EGG-000001", headers=admin)
    assert answer.status_code == 200, answer.text
    counts = answer.json()
    assert counts == {
        "tenant": world.own, "subject": "EGG-000001", "records": 1, "predictions": 1,
        "feedback": 0, "dead_letters": 0, "scans": 1, "blobs_deleted": 1, "blobs_kept": 0,
    }  # fmt: skip

    def status(tenant: str, subject: str, suffix: str = "") -> int:
        scan = scans[(tenant, subject)]
        reader = world.headers(tenant, "viewer")
        return world.client.get(f"/v1/scans/{scan}{suffix}", headers=reader).status_code

    assert status(world.own, "EGG-000001") == 404
    assert status(world.own, "EGG-000002") == 200
    assert status(world.own, "EGG-000002", "/image") == 200
    # The same bytes in the other tenant: its own blob, still there.
    assert status(world.other, "EGG-000001", "/image") == 200
    records = world.client.get("/v1/apps/eggs/records", headers=admin).json()["items"]
    assert [r["subject"] for r in records] == ["EGG-000002"]
    again = world.client.delete("/v1/admin/subjects/EGG-000001", headers=admin)
    assert again.status_code == 404

    audit = world.client.get("/v1/audit", params={"action": ACTION}, headers=admin).json()
    (entry,) = audit["items"]
    assert json.loads(entry["target"]) == {k: v for k, v in counts.items() if k != "tenant"}
    assert entry["actor"].startswith("key:") and entry["role"] == "admin"
    assert world.client.get("/v1/audit/verify", headers=admin).json()["ok"]
    other = world.headers(world.other, "admin")
    assert world.client.get("/v1/audit", params={"action": ACTION}, headers=other).json() == {
        "items": [], "next_cursor": None
    }  # fmt: skip
