"""Login, and the routes that manage a tenant: users, API keys, models, replay and the
erasure of a subject."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import AwareDatetime, BaseModel, Field, field_validator

from inferstream.api.audit import claim_login
from inferstream.api.auth import (
    Principal,
    check_role,
    client_address,
    hash_password,
    issue_key,
    issue_token,
    requester_of,
    require,
    sign_in_with_password,
)
from inferstream.api.errors import BadRequest, Conflict, NotFound, Unavailable
from inferstream.api.permissions import Role, roles_for
from inferstream.api.served_models import serving_source
from inferstream.api.services import services_of
from inferstream.bus import InvalidSeekTarget, seek_target
from inferstream.bus.seek import MAX_OFFSET
from inferstream.classify import DEFAULT_ROLE, ModelInfo, read_model_info
from inferstream.errors import ConfigError, ModelError
from inferstream.pipeline import PipelineSpec
from inferstream.registry import ModelRegistry, RegistryError
from inferstream.stage_replay import ReplayNotApplied, replay_stage_in_store
from inferstream.store.erasure import SubjectNotFound, erase_subject

log = logging.getLogger(__name__)
router = APIRouter(tags=["admin"])

#: How long a replay waits for the stage's workers to pause; the request blocks meanwhile.
REPLAY_TIMEOUT_S = 30.0


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


class KeyInfo(BaseModel):
    key_id: str
    name: str
    role: Role
    created_at_us: int
    revoked_at_us: int | None = Field(description="when it was revoked; null while it works")


class ServedModel(BaseModel):
    stage: str
    step: int = Field(description="position of the classify step in the stage, from 0")
    name: str
    version: str
    role: str = Field(description="champion (its predictions count) or shadow")
    labels: list[str]
    input_shape: list[int]
    macs: int
    sha256: str = Field(description="SHA-256 of the ONNX file the workers load")


class Replay(BaseModel):
    stage: str = Field(
        min_length=1, max_length=128, description="a stage of the pipeline (listed in the enum)"
    )
    to: (
        Literal["earliest", "latest"] | Annotated[int, Field(ge=0, le=MAX_OFFSET)] | AwareDatetime
    ) = Field(description="earliest, latest, an offset, or an ISO 8601 time with a zone")

    @field_validator("to", mode="before")
    @classmethod
    def _numbers_are_offsets(cls, value: object) -> object:
        # pydantic would read a number that is no offset (-1, 1.5) as seconds since 1970.
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON's 22.0 is the integer 22
        if not (isinstance(value, int) and 0 <= value <= MAX_OFFSET):
            raise ValueError(f"offset {value} is not one (0 to {MAX_OFFSET})")
        return value


class ReplayOut(BaseModel):
    group: str
    topic: str
    to: str


class ErasureOut(BaseModel):
    tenant: str
    subject: str
    records: int = Field(description="records of the subject deleted")
    predictions: int = Field(description="predictions of those records deleted")
    feedback: int = Field(description="ground-truth labels of the subject deleted")
    dead_letters: int = Field(description="dead letters of the items it came from deleted")
    scans: int = Field(description="accepted scans of the subject deleted")
    blobs_deleted: int = Field(description="blobs deleted: nothing kept names them any more")
    blobs_kept: int = Field(
        description="blobs not deleted: another record or scan of the tenant names them, "
        "they were written again meanwhile, or they were gone already"
    )


@router.post("/auth/token", response_model=Token)
async def token(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> Token:
    """OAuth2 password login; ``username`` is ``<tenant>/<name>``. Answers a short-lived JWT."""
    state = services_of(request)
    # Per login name, so guessing one user's password is throttled like any API call.
    claim_login(request, form.username[:200])
    state.limiter.take(f"login/{form.username[:200]}")
    principal = await run_in_threadpool(
        sign_in_with_password,
        state.throttle,
        form.username,
        form.password,
        client_address(request),
    )
    log.info("login", extra={"subject": principal.subject, "tenant": principal.tenant})
    request.state.principal = principal  # for its audit entry
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
    services_of(request).accounts.create_user(
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
    state = services_of(request)
    issued = issue_key(
        state.accounts, principal.tenant, body.name, body.role, state.settings.max_keys
    )
    return KeyOut(
        key_id=issued.key_id,
        tenant=issued.tenant,
        name=issued.name,
        role=issued.role,
        key=issued.secret,
    )


@router.get("/v1/admin/users", response_model=list[UserOut])
def list_users(
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("GET /v1/admin/users")))],
) -> list[UserOut]:
    """The users of your tenant, by name."""
    found = services_of(request).accounts.list_users(principal.tenant)
    tenant = principal.tenant
    return [UserOut(username=name, tenant=tenant, role=check_role(role)) for name, role in found]


@router.delete("/v1/admin/users/{username}", status_code=204, response_class=Response)
def delete_user(
    username: str,
    request: Request,
    principal: Annotated[
        Principal, Depends(require(*roles_for("DELETE /v1/admin/users/{username}")))
    ],
) -> Response:
    """Delete a user of your tenant. Tokens it holds stop working when they expire."""
    if username == principal.subject:
        raise Conflict("you cannot delete the user you are logged in as; ask another admin")
    if not services_of(request).accounts.delete_user(principal.tenant, username):
        raise NotFound(f"no user {username[:128]!r} in your tenant")
    log.info("user deleted", extra={"username": username, "subject": principal.subject})
    return Response(status_code=204)


@router.get("/v1/admin/keys", response_model=list[KeyInfo])
def list_keys(
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("GET /v1/admin/keys")))],
) -> list[KeyInfo]:
    """Your tenant's API keys, revoked ones included; secrets are never shown again."""
    found = services_of(request).accounts.list_keys(principal.tenant)
    return [KeyInfo.model_validate(key, from_attributes=True) for key in found]


@router.delete("/v1/admin/keys/{key_id}", status_code=204, response_class=Response)
def revoke_key(
    key_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("DELETE /v1/admin/keys/{key_id}")))],
) -> Response:
    """Revoke an API key: its next request answers 401. Revoking twice is harmless."""
    services = services_of(request)
    if not services.accounts.revoke_key(principal.tenant, key_id):
        raise NotFound(f"no API key {key_id[:64]!r} in your tenant")
    services.keys.forget(principal.tenant, key_id)  # refused from its next request here
    log.info("key revoked", extra={"key_id": key_id, "subject": principal.subject})
    return Response(status_code=204)


@router.get("/v1/models", response_model=list[ServedModel])
def served_models(
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("GET /v1/models")))],
) -> list[ServedModel]:
    """The models this pipeline's stages serve: version, role and the file's checksum
    (for a step naming ``name@alias``, the version the alias points at now)."""
    services = services_of(request)
    registry = ModelRegistry(services.store, services.blobs)
    return describe_models(services.settings.pipeline, registry)


def served_labels(spec: PipelineSpec) -> frozenset[str]:
    """Every label some model of the pipeline predicts (what feedback may say)."""
    return frozenset(label for model in describe_models(spec) for label in model.labels)


def describe_models(spec: PipelineSpec, registry: ModelRegistry | None = None) -> list[ServedModel]:
    served = []
    for stage in spec.stages:
        for index, step in enumerate(stage.steps):
            if step.ref != "classify":
                continue
            try:
                info, digest = _model_info(str(step.params.get("model", "")), registry)
            except (ModelError, RegistryError) as exc:
                raise Unavailable(f"stage {stage.name!r}: {exc}") from exc
            served.append(
                ServedModel(
                    stage=stage.name, step=index, name=info.name, version=info.version,
                    role=str(step.params.get("role", DEFAULT_ROLE)), labels=list(info.labels),
                    input_shape=list(info.input_shape), macs=info.macs, sha256=digest,
                )
            )  # fmt: skip
    return served


def _model_info(model: str, registry: ModelRegistry | None) -> tuple[ModelInfo, str]:
    """A step's model: its files, or the deployment's registry version its
    ``name@alias`` points at now (what the workers serve)."""
    source = serving_source(model, registry)
    if isinstance(source, str):
        return read_model_info(source)
    return ModelInfo.from_json(source.info, Path(f"registry:{model}")), source.sha256


@router.post("/v1/admin/replay", response_model=ReplayOut, status_code=202)
def replay(
    body: Replay,
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("POST /v1/admin/replay")))],
) -> ReplayOut:
    """Make a stage's running workers reprocess from ``to``, without a restart.

    The workers pause, their group's offsets move and the stage's state is reset; the
    answer comes once they resume (up to 30 s). A 409 means a worker did not pause in
    time and nothing moved. The group is the pipeline's, shared by every tenant:
    replay re-runs all tenants' messages from that point (sinks upsert, so nothing is
    doubled).
    """
    state = services_of(request)
    spec = state.settings.pipeline
    try:
        stage = spec.stage(body.stage)
    except ConfigError as exc:
        raise BadRequest(str(exc)) from exc
    try:
        target = seek_target(body.to)
    except InvalidSeekTarget as exc:
        raise BadRequest(str(exc)) from exc
    group = stage.group(spec.name)
    shown = body.to.isoformat() if isinstance(body.to, datetime) else str(body.to)
    try:
        replay_stage_in_store(
            state.bus, spec.store, group=group, topics=stage.inputs, target=target,
            timeout_s=REPLAY_TIMEOUT_S,
        )  # fmt: skip
    except ReplayNotApplied as exc:
        raise Conflict(str(exc)) from exc
    log.info("replay", extra={"group": group, "to": shown, "subject": principal.subject})
    return ReplayOut(group=group, topic=", ".join(stage.inputs), to=shown)


@router.delete("/v1/admin/subjects/{subject}", response_model=ErasureOut)
def erase(
    subject: Annotated[str, PathParam(min_length=1, max_length=256)],
    request: Request,
    principal: Annotated[
        Principal, Depends(require(*roles_for("DELETE /v1/admin/subjects/{subject}")))
    ],
) -> ErasureOut:
    """Erase a subject of your tenant (what the application's subject attribute names,
    e.g. a specimen's id): its records and their predictions, its feedback, its accepted scans,
    the dead letters of its items, and the blobs nothing else of your tenant names, in one
    transaction with an audit entry that counts them. 404 when there is nothing of it."""
    services = services_of(request)
    try:
        done = erase_subject(
            services.audit.log, services.blobs, principal.tenant, subject,
            requester_of(request, principal),
        )  # fmt: skip
    except SubjectNotFound as exc:
        raise NotFound(f"no subject {subject[:128]!r} in your tenant") from exc
    # The subject's id is not logged: the audit entry is the one place that keeps it.
    log.info("subject erased", extra={"rows": done.rows, "subject": principal.subject})
    return ErasureOut(**done.to_dict())
