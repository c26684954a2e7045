"""Sharing grants over HTTP: an owner tenant's admins grant, list and revoke them.

``POST /v1/grants`` lets another tenant read a slice of the caller's records of one
served application (attribute conditions, a window on the record's time, images or
not, masked attributes, an expiry); ``GET /v1/grants`` lists the grants the caller's
tenant made and received; ``DELETE /v1/grants/{grant_id}`` revokes one of its own,
in force for the grantee's next request. What a grant admits is enforced in the store
(:mod:`inferstream.store.sharing`); these routes only make and end grants.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from pydantic import AwareDatetime, BaseModel, Field

from inferstream.api.auth import Principal, require
from inferstream.api.errors import BadRequest, NotFound
from inferstream.api.permissions import roles_for
from inferstream.api.records import served_app
from inferstream.api.services import services_of
from inferstream.store.sharing import Condition, Grant, GrantNotFound, Sharing

router = APIRouter(tags=["sharing"])

Bound = int | float | str | None


class ConditionIn(BaseModel):
    """One declared attribute held to an inclusive range; give ``equals`` or a bound."""

    attribute: str = Field(min_length=1, max_length=63)
    equals: int | float | str | None = None
    min: int | float | str | None = Field(default=None, description="lowest value admitted")
    max: int | float | str | None = Field(default=None, description="highest value admitted")


class GrantIn(BaseModel):
    grantee: str = Field(min_length=1, max_length=128, description="the tenant to share with")
    app: str = Field(min_length=1, max_length=128)
    conditions: list[ConditionIn] = Field(default_factory=list, max_length=16)
    since: AwareDatetime | None = Field(default=None, description="records from this time on")
    until: AwareDatetime | None = Field(default=None, description="records before this time")
    images: bool = Field(default=True, description="whether the grantee may read images")
    masked: list[str] = Field(default_factory=list, max_length=64,
                              description="attributes the grantee never sees")  # fmt: skip
    expires_at: AwareDatetime


class ConditionOut(BaseModel):
    attribute: str
    kind: Literal["number", "text"]
    min: Bound
    max: Bound


class GrantOut(BaseModel):
    id: str
    owner: str
    grantee: str
    app: str
    conditions: list[ConditionOut]
    since_us: int | None
    until_us: int | None
    images: bool
    masked: list[str]
    expires_at_us: int
    created_by: str
    created_at_us: int
    revoked_at_us: int | None
    revoked_by: str | None

    @classmethod
    def of(cls, grant: Grant) -> GrantOut:
        conditions = [ConditionOut(attribute=c.attribute, kind=c.kind, min=c.low, max=c.high)
                      for c in grant.conditions]  # fmt: skip
        names = set(cls.model_fields) - {"conditions", "masked"}
        values: dict[str, Any] = {name: getattr(grant, name) for name in names}
        return cls(conditions=conditions, masked=list(grant.masked), **values)


def _guard(route: str) -> Any:
    return Depends(require(*roles_for(route)))


@router.post("/v1/grants", response_model=GrantOut, status_code=201)
def make_grant(
    body: GrantIn,
    request: Request,
    principal: Annotated[Principal, _guard("POST /v1/grants")],
) -> GrantOut:
    """Let another tenant read a slice of your records of one application."""
    services = services_of(request)
    spec = served_app(request, body.app)
    if not services.accounts.tenant_exists(body.grantee):
        raise BadRequest(f"no tenant {body.grantee[:64]!r}; name an existing tenant")
    kinds: dict[str, Literal["number", "text"]] = {
        a.name: "number" if a.kind in ("int", "float") else "text" for a in spec.attributes
    }
    conditions = [_condition(c, kinds.get(c.attribute, "text")) for c in body.conditions]
    grant = Sharing(services.store).grant(
        principal.tenant, body.grantee, spec, expires_at_us=_us(body.expires_at) or 0,
        created_by=principal.subject, conditions=conditions, since_us=_us(body.since),
        until_us=_us(body.until), images=body.images, masked=body.masked,
    )  # fmt: skip
    return GrantOut.of(grant)


@router.get("/v1/grants", response_model=list[GrantOut])
def list_grants(
    request: Request, principal: Annotated[Principal, _guard("GET /v1/grants")]
) -> list[GrantOut]:
    """The grants your tenant made and those it received, live or not, oldest first."""
    grants = Sharing(services_of(request).store).grants(principal.tenant)
    return [GrantOut.of(grant) for grant in grants]


@router.delete("/v1/grants/{grant_id}", response_model=GrantOut)
def revoke_grant(
    grant_id: Annotated[str, PathParam(pattern=r"^g-[0-9a-f]{16}$")],
    request: Request,
    principal: Annotated[Principal, _guard("DELETE /v1/grants/{grant_id}")],
) -> GrantOut:
    """Revoke a grant your tenant made; the grantee's next request no longer sees its rows."""
    sharing = Sharing(services_of(request).store)
    try:
        return GrantOut.of(sharing.revoke(principal.tenant, grant_id, actor=principal.subject))
    except GrantNotFound as exc:
        raise NotFound(str(exc)) from exc


def _condition(given: ConditionIn, kind: Literal["number", "text"]) -> Condition:
    """The store's condition, its bounds typed as the attribute is declared."""
    if given.equals is not None and (given.min is not None or given.max is not None):
        raise BadRequest(f"condition on {given.attribute!r}: give equals, or min and/or max")
    low, high = (given.equals, given.equals) if given.equals is not None else (given.min, given.max)
    return Condition(given.attribute, kind, _typed(low, kind), _typed(high, kind))


def _typed(bound: Bound, kind: str) -> Bound:
    if bound is None:
        return None
    if kind == "text":
        return str(bound)
    try:
        return float(bound)
    except ValueError:
        raise BadRequest(f"{bound!r} is not a number") from None


def _us(moment: AwareDatetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1_000_000)
