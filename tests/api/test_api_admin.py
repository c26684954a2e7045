"""Managing a tenant over the API: listing and revoking keys, listing and deleting users,
and the models the pipeline serves."""

from __future__ import annotations

import hashlib
from contextlib import closing

import pytest
from api_testing import World, dicom_bytes
from test_api_auth import PASSWORD, login, make_user

from inferstream.api import admin
from inferstream.apps.eggs import APP
from inferstream.bus import Bus, Message, Record
from inferstream.replays import ReplayBoard


def _admin(world: World) -> dict[str, str]:
    return world.headers(world.own, "admin")


def _new_key(world: World, role: str = "device") -> dict[str, str]:
    answer = world.client.post("/v1/admin/keys", json={"name": "scanner-07", "role": role},
                               headers=_admin(world))  # fmt: skip
    assert answer.status_code == 201, answer.text
    body: dict[str, str] = answer.json()
    return body


def test_a_revoked_key_is_refused_from_its_next_request(world: World) -> None:
    key = _new_key(world)
    upload = {"X-API-Key": key["key"], "Content-Type": "application/dicom"}
    assert (
        world.client.post("/v1/scans", content=dicom_bytes(seed=3), headers=upload).status_code
        == 202
    )

    answer = world.client.delete(f"/v1/admin/keys/{key['key_id']}", headers=_admin(world))
    assert answer.status_code == 204, answer.text

    refused = world.client.post("/v1/scans", content=dicom_bytes(seed=4), headers=upload)
    assert refused.status_code == 401
    assert refused.json()["detail"] == "API key is unknown or revoked"


def test_key_list_shows_revocation_and_never_a_secret(world: World) -> None:
    kept, revoked = _new_key(world), _new_key(world, role="viewer")
    world.client.delete(f"/v1/admin/keys/{revoked['key_id']}", headers=_admin(world))
    first = world.client.get("/v1/admin/keys", headers=_admin(world))
    # Revoking again is harmless and keeps the first revocation time.
    again = world.client.delete(f"/v1/admin/keys/{revoked['key_id']}", headers=_admin(world))
    assert again.status_code == 204
    listed = {
        key["key_id"]: key
        for key in world.client.get("/v1/admin/keys", headers=_admin(world)).json()
    }

    assert listed[kept["key_id"]]["revoked_at_us"] is None
    assert listed[revoked["key_id"]]["revoked_at_us"] is not None
    before = {key["key_id"]: key for key in first.json()}
    assert listed[revoked["key_id"]]["revoked_at_us"] == before[revoked["key_id"]]["revoked_at_us"]
    assert listed[revoked["key_id"]]["role"] == "viewer"
    text = world.client.get("/v1/admin/keys", headers=_admin(world)).text
    for secret in (kept["key"], revoked["key"]):
        assert secret.rsplit(".", 1)[1] not in text
        assert hashlib.sha256(secret.rsplit(".", 1)[1].encode()).hexdigest() not in text


def test_an_unknown_key_or_user_is_404(world: World) -> None:
    for url in ("/v1/admin/keys/0123456789ab", "/v1/admin/users/nobody"):
        answer = world.client.delete(url, headers=_admin(world))
        assert answer.status_code == 404, (url, answer.text)
        assert answer.json()["error"] == "not_found"


def test_a_deleted_user_can_no_longer_log_in(world: World) -> None:
    username = make_user(world, role="viewer")
    assert login(world, username, PASSWORD).status_code == 200  # type: ignore[attr-defined]
    users = world.client.get("/v1/admin/users", headers=_admin(world)).json()
    assert {"username": "alice", "tenant": world.own, "role": "viewer"} in users

    answer = world.client.delete("/v1/admin/users/alice", headers=_admin(world))
    assert answer.status_code == 204, answer.text

    assert login(world, username, PASSWORD).status_code == 401  # type: ignore[attr-defined]
    users = world.client.get("/v1/admin/users", headers=_admin(world)).json()
    assert "alice" not in [user["username"] for user in users]


def test_an_admin_cannot_delete_themselves(world: World) -> None:
    username = make_user(world, role="admin")
    token = login(world, username, PASSWORD).json()["access_token"]  # type: ignore[attr-defined]
    answer = world.client.delete(
        "/v1/admin/users/alice", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 409, answer.text
    assert "alice" in [
        u["username"] for u in world.client.get("/v1/admin/users", headers=_admin(world)).json()
    ]


def test_models_lists_what_the_classify_stage_serves(world: World) -> None:
    answer = world.client.get("/v1/models", headers=world.headers(world.own, "viewer"))
    assert answer.status_code == 200, answer.text
    (model,) = answer.json()
    onnx = (APP.models_dir / "egg_sexing.onnx").read_bytes()
    assert model["stage"] == "classify"
    assert (model["name"], model["role"]) == ("egg_sexing", "champion")
    assert model["labels"] == ["female", "male", "not_developing"]
    assert model["sha256"] == hashlib.sha256(onnx).hexdigest()
    assert model["macs"] > 0


def _read_and_commit(world: World, stage_name: str) -> tuple[Bus, str, list[str]]:
    """Commit the stage's group past a few messages, as its workers would have."""
    spec = world.client.app.state.services.settings.pipeline  # type: ignore[attr-defined]
    bus: Bus = world.client.app.state.services.bus  # type: ignore[attr-defined]
    stage = spec.stage(stage_name)
    group, topics = stage.group(spec.name), list(stage.inputs)
    bus.produce(topics[0], [Record(b"k%d" % i, b"v") for i in range(4)])
    consumer = bus.consumer(group, topics)
    got: list[Message] = []
    while len(got) < 4:
        got += consumer.poll_batch(10, 0.1)
    consumer.commit(got)
    consumer.close()
    return bus, group, topics


def test_replay_moves_the_running_stage_and_resumes_it(world: World) -> None:
    bus, group, topics = _read_and_commit(world, "classify")
    answer = world.client.post(
        "/v1/admin/replay", json={"stage": "classify", "to": "earliest"}, headers=_admin(world)
    )
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"group": group, "topic": ", ".join(topics), "to": "earliest"}
    assert sum(p.lag for p in bus.partitions(topics[0], group)) == 4
    spec = world.client.app.state.services.settings.pipeline  # type: ignore[attr-defined]
    with closing(ReplayBoard(spec.store)) as board:
        latest = board.latest(group)
    assert latest is not None and latest.applied


def test_replay_whose_workers_do_not_pause_is_a_409_that_moves_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus, group, topics = _read_and_commit(world, "classify")
    monkeypatch.setattr(admin, "REPLAY_TIMEOUT_S", 0.3)
    old_worker = bus.consumer(group, topics)  # it does not watch for replays
    try:
        answer = world.client.post(
            "/v1/admin/replay", json={"stage": "classify", "to": "earliest"}, headers=_admin(world)
        )
    finally:
        old_worker.close()
    assert answer.status_code == 409, answer.text
    assert "did not leave in time" in answer.json()["detail"]
    assert "nothing was moved" in answer.json()["detail"]
    assert sum(p.lag for p in bus.partitions(topics[0], group)) == 0
