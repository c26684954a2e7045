"""Concurrent uploads share commits (group commit) yet each lands in its own tenant."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from api_testing import World, dicom_bytes


def test_concurrent_raw_uploads_are_each_recorded_in_their_tenant(world: World) -> None:
    tenants = [world.own, world.other] * 12

    def send(number: int) -> tuple[str, int, list[str]]:
        tenant = tenants[number]
        headers = {**world.headers(tenant, "device"), "Content-Type": "application/dicom"}
        answer = world.client.post("/v1/scans", content=dicom_bytes(seed=number), headers=headers)
        return tenant, answer.status_code, answer.json().get("ids", [])

    with ThreadPoolExecutor(max_workers=len(tenants)) as pool:
        answers = list(pool.map(send, range(len(tenants))))
    assert [status for _, status, _ in answers] == [202] * len(tenants)
    ids = [ident for _, _, got in answers for ident in got]
    assert len(set(ids)) == len(tenants)
    for tenant, _, (ident,) in answers:
        stranger = world.other if tenant == world.own else world.own
        own_view = world.client.get(f"/v1/scans/{ident}", headers=world.headers(tenant, "viewer"))
        assert own_view.status_code == 200 and own_view.json()["status"] == "queued"
        other_view = world.client.get(
            f"/v1/scans/{ident}", headers=world.headers(stranger, "viewer")
        )
        assert other_view.status_code == 404
    bus = world.client.app.state.services.bus  # type: ignore[attr-defined]
    assert sum(part.high for part in bus.partitions("scans.raw")) == len(tenants)
