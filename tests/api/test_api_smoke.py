"""First contact: probes answer, ingest reaches the bus before 202, the scan is queued."""

from __future__ import annotations

from api_testing import World, dicom_bytes

from inferstream.envelope import parse


def test_healthz_and_readyz(world: World) -> None:
    assert world.client.get("/healthz").json() == {"status": "ok"}
    assert world.client.get("/readyz").json() == {"status": "ready"}


def test_raw_dicom_is_on_the_bus_when_202_is_answered(world: World) -> None:
    data = dicom_bytes(seed=1)
    answer = world.client.post(
        "/v1/scans",
        content=data,
        headers={**world.headers(world.own, "device"), "Content-Type": "application/dicom"},
    )
    assert answer.status_code == 202, answer.text
    (scan_id,) = answer.json()["ids"]
    bus = world.client.app.state.services.bus  # type: ignore[attr-defined]
    consumer = bus.consumer("test-reader", ["scans.raw"])
    try:
        messages = consumer.poll_batch(100, 0.5)
    finally:
        consumer.close()
    envelopes = [parse(m.value) for m in messages]
    assert [env.id for env in envelopes] == [scan_id]
    env = envelopes[0]
    assert env.tenant == world.own
    assert env.attributes["egg_id"] == "EGG-000001"
    assert env.payload.inline[128:] == data[128:]
    status = world.client.get(f"/v1/scans/{scan_id}", headers=world.headers(world.own, "viewer"))
    assert status.json()["status"] == "queued"
