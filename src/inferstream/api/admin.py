"""Login, and the routes that manage a tenant: users, API keys and replay."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from inferstream.api.auth import (
    Principal,
    hash_password,
    issue_key,
    issue_token,
    login,
    require,
)
from inferstream.api.errors import BadRequest
from inferstream.api.permissions import Role, roles_for
from inferstream.bus import SeekToTimestamp
from inferstream.errors import ConfigError

log = logging.getLogger(__name__)
router = APIRouter(tags=["admin"])


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class WhoAmI(BaseModel):
    subject: str
    tenant: str
    role: Role


class NewUser(BaseModel):
    username: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
    password: str = Field(min_length=12, max_length=1024)
    role: Role


class UserOut(BaseModel):
    username: str
    tenant: str
    role: Role


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: Role


class KeyOut(BaseModel):
    key_id: str
    tenant: str
    name: str
    role: Role
    key: str = Field(description="the secret, shown this once; store it now")


class Replay(BaseModel):
    stage: str = Field(min_length=1, max_length=128)
    to: str = Field(description="earliest | latest | an offset | an ISO 8601 time with zone")


class ReplayOut(BaseModel):
    group: str
    topic: str
    to: str


@router.post("/auth/token", response_model=Token)
async def token(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> Token:
    """OAuth2 password login; ``username`` is ``<tenant>/<name>``. Answers a short-lived JWT."""
    state = request.app.state
    # Per login name, so guessing one user's password is throttled like any API call.
    state.limiter.take(f"login/{form.username[:200]}")
    principal = await run_in_threadpool(login, state.accounts, form.username, form.password)
    log.info("login", extra={"subject": principal.subject, "tenant": principal.tenant})
    return Token(
        access_token=issue_token(state.settings, principal),
        expires_in=state.settings.token_ttl_s,
    )


@router.get("/v1/whoami", response_model=WhoAmI)
def whoami(
    principal: Annotated[Principal, Depends(require(*roles_for("GET /v1/whoami")))],
) -> WhoAmI:
    """The caller as the API sees it."""
    return WhoAmI(subject=principal.subject, tenant=principal.tenant, role=principal.role)


@router.post("/v1/admin/users", response_model=UserOut, status_code=201)
def create_user(
    body: NewUser,
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("POST /v1/admin/users")))],
) -> UserOut:
    """Create a user in your tenant."""
    request.app.state.accounts.create_user(
        principal.tenant, body.username, hash_password(body.password), body.role
    )
    return UserOut(username=body.username, tenant=principal.tenant, role=body.role)


@router.post("/v1/admin/keys", response_model=KeyOut, status_code=201)
def create_key(
    body: NewKey,
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("POST /v1/admin/keys")))],
) -> KeyOut:
    """Create an API key in your tenant; the answer holds its secret, shown only once."""
    issued = issue_key(request.app.state.accounts, principal.tenant, body.name, body.role)
    return KeyOut(
        key_id=issued.key_id,
        tenant=issued.tenant,
        name=issued.name,
        role=issued.role,
        key=issued.secret,
    )


@router.post("/v1/admin/replay", response_model=ReplayOut, status_code=202)
def replay(
    body: Replay,
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("POST /v1/admin/replay")))],
) -> ReplayOut:
    """Move a stage's consumer group so its workers reprocess from ``to``.

    The group is the pipeline's, shared by every tenant: replay re-runs all tenants'
    messages from that point (sinks upsert, so nothing is doubled).
    """
    state = request.app.state
    spec = state.settings.pipeline
    try:
        stage = spec.stage(body.stage)
    except ConfigError as exc:
        raise BadRequest(str(exc)) from exc
    group = stage.group(spec.name)
    state.bus.seek_group(group, stage.input, seek_target(body.to))
    log.info("replay", extra={"group": group, "to": body.to, "subject": principal.subject})
    return ReplayOut(group=group, topic=stage.input, to=body.to)


def seek_target(text: str) -> Literal["earliest", "latest"] | int | SeekToTimestamp:
    if text in ("earliest", "latest"):
        return "earliest" if text == "earliest" else "latest"
    if text.isdigit() and len(text) <= 18:
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(
            f"replay target {text[:64]!r}: use earliest, latest, an offset or an ISO 8601 time"
        ) from exc
    if moment.tzinfo is None:
        raise BadRequest(f"replay target {text[:64]!r} has no time zone; add e.g. +00:00")
    return SeekToTimestamp(int(moment.timestamp() * 1000))
