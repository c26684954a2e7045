"""The model registry over HTTP: what a tenant may see and change of it.

A tenant sees the deployment's models (registered with ``inferstream models``) and its
own. Operators and admins register private versions (multipart: the ``.onnx`` file as
``model`` and its ``.json`` metadata as ``metadata``), point their own aliases and roll
them back; each change is in the audit trail with the user who made it and the reason
given. The deployment's aliases are moved with the CLI.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from inferstream.api.auth import Principal, require
from inferstream.api.errors import ApiError, BadRequest, Conflict, NotFound
from inferstream.api.ingest import parse_form, read_body
from inferstream.api.permissions import roles_for
from inferstream.api.services import services_of
from inferstream.envelope import now_us
from inferstream.errors import ModelError
from inferstream.model_timeline import timeline
from inferstream.promotion import Policy, compare
from inferstream.registry import ALIAS_RE, NAME_RE, ModelRegistry, RegistryError

router = APIRouter(tags=["models"])
#: The largest model file the API takes (bigger ones: the CLI, on the machine).
MAX_MODEL_BYTES = 64 * 1024 * 1024
ModelName = Annotated[str, Path(pattern=f"^{NAME_RE.pattern}$", description="a model name")]
AliasName = Annotated[
    str, Path(pattern=f"^{ALIAS_RE.pattern}$", description="champion, challenger, shadow, ...")
]


#: A reason must say something: at least one character that is not white space. "White
#: space" differs by engine: the schema's (ECMAScript) ``\s`` lacks U+0085, the API's
#: (Rust regex, Unicode) has it and lacks U+FEFF, Python's also has U+001C-U+001F. The
#: class names all of those, so a reason the schema allows is one the API takes.
NOT_BLANK = r"[^\s\u0085\ufeff\u001c-\u001f]"
_REASON = Field(
    min_length=1, max_length=2000, pattern=NOT_BLANK, description="kept in the audit log"
)


class AliasMove(BaseModel):
    version: str = Field(pattern=f"^{NAME_RE.pattern}$")
    reason: str = _REASON


class Reason(BaseModel):
    reason: str = _REASON


def _registry(request: Request) -> ModelRegistry:
    services = services_of(request)
    return ModelRegistry(services.store, services.blobs, services.audit.log)


def _actor(principal: Principal) -> str:
    return f"{principal.tenant}/{principal.subject}"


def _api_error(exc: RegistryError) -> ApiError:
    kind = {404: NotFound, 409: Conflict}.get(exc.status, BadRequest)
    return kind(str(exc))


@router.get("/v1/registry/models")
def list_models(
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("GET /v1/registry/models")))],
) -> list[dict[str, Any]]:
    """Every model version you can use (the deployment's and your tenant's), with the
    aliases that point at it."""
    registry = _registry(request)
    versions = registry.versions(tenant=principal.tenant)
    aliases = registry.aliases(tenant=principal.tenant)
    return [
        {**v.to_dict(), "aliases": [a.alias for a in aliases if (a.owner, a.name, a.version)
                                    == (v.owner, v.name, v.version)]}
        for v in versions
    ]  # fmt: skip


@router.get("/v1/registry/models/{name}")
def show_model(
    name: ModelName,
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("GET /v1/registry/models/{name}")))],
) -> dict[str, Any]:
    """One model: its versions, aliases (yours and the deployment's) and audit trail."""
    registry = _registry(request)
    versions = registry.versions(name, tenant=principal.tenant)
    if not versions:
        raise NotFound(f"no model {name[:128]!r} in the registry you can see")
    return {
        "name": name,
        "versions": [v.to_dict() for v in versions],
        "aliases": [
            {**a.to_dict(), "owner": a.owner or None}
            for a in registry.aliases(name, tenant=principal.tenant)
        ],
        "history": [e.to_dict() for e in registry.history(name, tenant=principal.tenant)],
    }


_UPLOAD = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "model": {"type": "string", "format": "binary", "description": "the .onnx"},
                "metadata": {"type": "string", "description": "the model's .json"},
                "reason": {"type": "string", "description": "kept in the audit log"},
            },
            "required": ["model", "metadata"],
        }
    }
}


@router.get("/v1/registry/models/{name}/evaluation")
def evaluate_model(
    name: ModelName,
    request: Request,
    principal: Annotated[
        Principal, Depends(require(*roles_for("GET /v1/registry/models/{name}/evaluation")))
    ],
    *,
    champion: Annotated[str, Query(pattern=f"^{ALIAS_RE.pattern}$")] = "champion",
    challenger: Annotated[str, Query(pattern=f"^{ALIAS_RE.pattern}$")] = "challenger",
    min_labels: Annotated[int, Query(ge=1, le=10_000_000)] = 200,
    alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
    margin: Annotated[float, Query(ge=0, lt=1)] = 0.0,
) -> dict[str, Any]:
    """The challenger against the champion on your tenant's labelled records (paired,
    McNemar's exact test) and what the policy would decide; nothing is moved (the
    deployment's promotions are the pipeline's ``promotion:`` or the CLI's)."""
    services = services_of(request)
    registry = _registry(request)
    head = services.app.first_head.name if services.app.first_head else ""
    try:
        champ = registry.resolve(name, champion, tenant=principal.tenant)
        chall = registry.resolve(name, challenger, tenant=principal.tenant)
    except RegistryError as exc:
        raise _api_error(exc) from exc
    comparison = compare(
        services.store, [principal.tenant], app=services.app.name, head=head, name=name,
        champion=champ.version, challenger=chall.version,
    )  # fmt: skip
    decision, why = Policy(min_labels, alpha, margin).decide(comparison)
    return {**comparison.to_dict(), "decision": decision, "why": why, "applied": False}


@router.get("/v1/registry/models/{name}/timeline")
def model_timeline(
    name: ModelName,
    request: Request,
    principal: Annotated[
        Principal, Depends(require(*roles_for("GET /v1/registry/models/{name}/timeline")))
    ],
    *,
    hours: Annotated[float, Query(gt=0, le=24 * 366)] = 24.0,
    points: Annotated[int, Query(ge=1, le=1000)] = 60,
) -> dict[str, Any]:
    """Each version of the model on your tenant's records over the last ``hours``, in
    about ``points`` time buckets: inputs scored, mean confidence (the estimate before
    labels, and a drift signal) and accuracy once labels arrived, acting and shadow
    apart; and the registry's events (alias moves, promotions, rollbacks, workers'
    switches). An empty series list when nothing was scored."""
    services = services_of(request)
    registry = _registry(request)
    if not registry.versions(name, tenant=principal.tenant):
        raise NotFound(f"no model {name[:128]!r} in the registry you can see")
    head = services.app.first_head.name if services.app.first_head else ""
    since = now_us() - int(hours * 3600 * 1e6)
    return timeline(registry, principal.tenant, app=services.app.name, head=head, name=name,
                    since_us=since, points=points)  # fmt: skip


@router.post(
    "/v1/registry/models",
    status_code=201,
    openapi_extra={"requestBody": {"required": True, "content": _UPLOAD}},
)
async def register_model(
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("POST /v1/registry/models")))],
) -> dict[str, Any]:
    """Register a private model version of your tenant: multipart with the ONNX file as
    ``model``, its metadata JSON as ``metadata`` (name, version, labels, input, output,
    input_shape) and an optional ``reason``. 409 if the version exists with other bytes."""
    body = await read_body(
        request, MAX_MODEL_BYTES, "body is empty; send the model and its metadata (multipart)"
    )
    form = await parse_form(request, body, max_files=1)
    graph = next((f.data for f in form.files if f.field == "model"), None)
    fields = dict(form.fields)
    if graph is None or "metadata" not in fields:
        raise BadRequest("send multipart with the ONNX file as 'model' and its JSON as 'metadata'")
    try:
        metadata = json.loads(fields["metadata"])
    except ValueError as exc:
        raise BadRequest(f"metadata is not JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be a JSON object (the model's .json file)")
    registry = _registry(request)
    try:
        version = await run_in_threadpool(
            registry.register, graph, metadata, actor=_actor(principal),
            tenant=principal.tenant, reason=fields.get("reason", ""),
        )  # fmt: skip
    except RegistryError as exc:
        raise _api_error(exc) from exc
    except ModelError as exc:
        raise BadRequest(str(exc)) from exc
    return version.to_dict()


@router.put("/v1/registry/models/{name}/aliases/{alias}")
def move_alias(
    name: ModelName,
    alias: AliasName,
    body: AliasMove,
    request: Request,
    principal: Annotated[
        Principal, Depends(require(*roles_for("PUT /v1/registry/models/{name}/aliases/{alias}")))
    ],
) -> dict[str, Any]:
    """Point your tenant's ``name@alias`` at a version you can see."""
    try:
        moved = _registry(request).set_alias(
            name, alias, body.version, actor=_actor(principal), reason=body.reason,
            tenant=principal.tenant,
        )  # fmt: skip
    except RegistryError as exc:
        raise _api_error(exc) from exc
    return {"name": name, **moved.to_dict()}


@router.post("/v1/registry/models/{name}/aliases/{alias}/rollback")
def roll_back_alias(
    name: ModelName,
    alias: AliasName,
    body: Reason,
    request: Request,
    principal: Annotated[
        Principal,
        Depends(require(*roles_for("POST /v1/registry/models/{name}/aliases/{alias}/rollback"))),
    ],
) -> dict[str, Any]:
    """Point your tenant's ``name@alias`` back at the version before its last move."""
    try:
        moved = _registry(request).rollback(
            name, alias, actor=_actor(principal), reason=body.reason, tenant=principal.tenant
        )
    except RegistryError as exc:
        raise _api_error(exc) from exc
    return {"name": name, **moved.to_dict()}
