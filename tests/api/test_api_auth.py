"""Login, tokens and keys: what is accepted, what is refused, and what is never logged."""

from __future__ import annotations

import logging
import time
import warnings

import jwt
import pytest
from api_testing import JWT_SECRET, World

PASSWORD = "correct horse battery staple"


def make_user(world: World, role: str = "operator") -> str:
    answer = world.client.post(
        "/v1/admin/users",
        json={"username": "alice", "password": PASSWORD, "role": role},
        headers=world.headers(world.own, "admin"),
    )
    assert answer.status_code == 201, answer.text
    return f"{world.own}/alice"


def login(world: World, username: str, password: str) -> object:
    return world.client.post("/auth/token", data={"username": username, "password": password})


def test_login_issues_a_short_lived_token_that_works(world: World) -> None:
    username = make_user(world)
    answer = login(world, username, PASSWORD)
    assert answer.status_code == 200, answer.text  # type: ignore[attr-defined]
    body = answer.json()  # type: ignore[attr-defined]
    claims = jwt.decode(
        body["access_token"], JWT_SECRET, algorithms=["HS256"], issuer="inferstream"
    )
    assert (claims["sub"], claims["tenant"], claims["role"]) == ("alice", world.own, "operator")
    assert 0 < claims["exp"] - time.time() <= body["expires_in"] == 900
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert world.client.get("/v1/whoami", headers=headers).json()["tenant"] == world.own


@pytest.mark.parametrize(
    ("username", "password"),
    [("OWN/alice", "wrong password!!"), ("OWN/nobody", PASSWORD), ("alice", PASSWORD),
     ("OTHER/alice", PASSWORD), ("../../x", PASSWORD)],
)  # fmt: skip
def test_wrong_credentials_are_401_with_one_message(
    world: World, username: str, password: str
) -> None:
    make_user(world)
    username = username.replace("OWN", world.own).replace("OTHER", world.other)
    answer = login(world, username, password)
    assert answer.status_code == 401  # type: ignore[attr-defined]
    # The same words whether or not the user exists.
    assert answer.json()["detail"] == (  # type: ignore[attr-defined]
        "wrong username or password; the username is <tenant>/<name>"
    )


def _token(secret: str = JWT_SECRET, algorithm: str = "HS256", **claims: object) -> str:
    base: dict[str, object] = {"sub": "mallory", "tenant": "x", "role": "admin",
                               "iss": "inferstream", "exp": int(time.time()) + 60}  # fmt: skip
    with warnings.catch_warnings():  # HS512 warns about the key length; it is refused anyway
        warnings.simplefilter("ignore")
        return jwt.encode({**base, **claims}, secret, algorithm=algorithm)


@pytest.mark.parametrize(
    "token",
    [
        _token(exp=int(time.time()) - 10),  # expired
        _token(secret="another-secret-" * 4),  # signed by someone else
        _token(algorithm="HS512"),  # algorithm not the pinned one
        _token(iss="elsewhere"),  # wrong issuer
        _token(role="root"),  # unknown role
        jwt.encode({"sub": "m", "tenant": "x", "role": "admin"}, JWT_SECRET),  # no exp
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtIiwidGVuYW50IjoieCIsInJvbGUiOiJhZG1pbiJ9.",  # alg none
        "isk.acme.000000000000.guessed-secret",
        "isk.../../x.y.z",
    ],
)
def test_bad_tokens_and_keys_are_401(world: World, token: str) -> None:
    answer = world.client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == "unauthorized"


def test_tampered_api_key_is_401(world: World) -> None:
    key = world.keys[(world.own, "admin")]
    tampered = key[:-2] + ("AA" if not key.endswith("AA") else "BB")
    answer = world.client.get("/v1/whoami", headers={"X-API-Key": tampered})
    assert answer.status_code == 401


def test_key_of_another_tenant_cannot_be_reused_under_this_tenant(world: World) -> None:
    _, _, key_id, secret = world.keys[(world.other, "admin")].split(".")
    forged = f"isk.{world.own}.{key_id}.{secret}"
    assert world.client.get("/v1/whoami", headers={"X-API-Key": forged}).status_code == 401


def test_no_secret_token_or_password_in_logs(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    username = make_user(world)
    token = login(world, username, PASSWORD).json()["access_token"]  # type: ignore[attr-defined]
    key = world.keys[(world.own, "viewer")]
    world.client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    world.client.get("/v1/whoami", headers={"X-API-Key": key})
    world.client.get("/v1/whoami", headers={"X-API-Key": key + "x"})
    logged = "\n".join(str(record.__dict__) for record in caplog.records)
    assert "request" in logged  # the access lines were captured
    for secret in (PASSWORD, token, key.rsplit(".", 1)[1]):
        assert secret not in logged


def test_principal_for_serves_websockets_with_keys_and_tokens(world: World) -> None:
    from inferstream.api import principal_for
    from inferstream.api.errors import Unauthorized

    state = world.client.app.state.services  # type: ignore[attr-defined]
    by_key = principal_for(state, world.keys[(world.other, "viewer")], "127.0.0.1")
    assert (by_key.tenant, by_key.role) == (world.other, "viewer")
    token = _token(tenant=world.own, role="operator")
    by_token = principal_for(state, token, "127.0.0.1")
    assert (by_token.subject, by_token.tenant, by_token.role) == ("mallory", world.own, "operator")
    with pytest.raises(Unauthorized):
        principal_for(state, token + "x", "127.0.0.1")
