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


def test_a_bad_upload_among_concurrent_ones_is_refused_alone(world: World) -> None:
    good = {**world.headers(world.own, "device"), "Content-Type": "application/dicom"}

    def send(number: int) -> tuple[int, int, list[str]]:
        body = b"not a DICOM file" if number % 3 == 0 else dicom_bytes(seed=100 + number)
        answer = world.client.post("/v1/scans", content=body, headers=good)
        return number, answer.status_code, answer.json().get("ids", [])

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(send, range(24)))
    bad = [status for number, status, _ in answers if number % 3 == 0]
    accepted = [ids for number, status, ids in answers if number % 3 and status == 202]
    assert set(bad) == {415} or set(bad) == {400}, bad
    assert len(accepted) == 16
    ids = {ident for got in accepted for ident in got}
    assert len(ids) == 16
    viewer = world.headers(world.own, "viewer")
    for ident in ids:
        assert world.client.get(f"/v1/scans/{ident}", headers=viewer).json()["status"] == "queued"
    bus = world.client.app.state.services.bus  # type: ignore[attr-defined]
    assert sum(part.high for part in bus.partitions("scans.raw")) == 16
