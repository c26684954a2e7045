"""The caller's tenant's stored retention policy over HTTP (admins only).

``GET /v1/admin/retention`` reads it (``keep_days`` null: none, results are kept),
``PUT`` sets it (``{"keep_days": N}``, 1 to 36,500), ``DELETE`` removes it (harmless
when there is none). Setting and removing write an audit entry in the transaction that
changes the policy, beside the request's own entry; the pipeline's housekeeping applies
the policy (:mod:`inferstream.store.retention`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferstream.api.auth import Principal, requester_of, require
from inferstream.api.permissions import roles_for
from inferstream.api.services import services_of
from inferstream.store.retention import KeepPolicy, clear_policy, get_policy, set_policy
from inferstream.store.schema import MAX_KEEP_DAYS

router = APIRouter(tags=["admin"])

ROUTE = "/v1/admin/retention"


class RetentionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_days: int = Field(
        ge=1, le=MAX_KEEP_DAYS, strict=True,
        description="days your results are kept: records stored earlier, their "
        "predictions, and the feedback, accepted scans and dead letters recorded earlier "
        "are deleted by the pipeline's housekeeping",
    )  # fmt: skip

    @field_validator("keep_days", mode="before")
    @classmethod
    def _whole_floats_are_days(cls, value: object) -> object:
        # JSON Schema's integer admits 30.0; strict mode still refuses 30.5, "30" and true.
        return int(value) if isinstance(value, float) and value.is_integer() else value


class RetentionOut(BaseModel):
    tenant: str
    keep_days: int | None = Field(
        description="days your results are kept; null: no policy, they are kept until erased"
    )
    set_by: str | None = Field(description="the user or API key that set it, or cli:<os user>")
    set_at_us: int | None

    @classmethod
    def of(cls, tenant: str, policy: KeepPolicy | None) -> RetentionOut:
        if policy is None:
            return cls(tenant=tenant, keep_days=None, set_by=None, set_at_us=None)
        return cls(**policy.to_dict())


def _guard(method: str) -> Any:
    return Depends(require(*roles_for(f"{method} {ROUTE}")))


@router.get(ROUTE, response_model=RetentionOut)
def read_retention(
    request: Request, principal: Annotated[Principal, _guard("GET")]
) -> RetentionOut:
    """Your tenant's retention policy; ``keep_days`` null when it has none."""
    policy = get_policy(services_of(request).store, principal.tenant)
    return RetentionOut.of(principal.tenant, policy)


@router.put(ROUTE, response_model=RetentionOut)
def set_retention(
    body: RetentionIn, request: Request, principal: Annotated[Principal, _guard("PUT")]
) -> RetentionOut:
    """Keep your tenant's results ``keep_days`` days (replaces its policy). The next
    housekeeping (within a minute under ``inferstream up``) deletes older ones, and no
    topic keeps a message longer than the shortest policy of any tenant."""
    log = services_of(request).audit.log
    policy = set_policy(log, principal.tenant, body.keep_days, requester_of(request, principal))
    return RetentionOut.of(principal.tenant, policy)


@router.delete(ROUTE, status_code=204, response_class=Response)
def clear_retention(
    request: Request, principal: Annotated[Principal, _guard("DELETE")]
) -> Response:
    """Remove your tenant's retention policy: its results are kept from now on. Harmless
    when it has none (no audit entry of a change then)."""
    clear_policy(services_of(request).audit.log, principal.tenant, requester_of(request, principal))
    return Response(status_code=204)
