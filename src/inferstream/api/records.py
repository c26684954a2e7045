"""Routes driven by the application's declaration: what it is, its records, one record.

``GET /v1/apps/{app}`` describes the application (attributes and which filter,
heads with labels and colours, ratios, nouns). ``GET /v1/apps/{app}/records``
filters its records by any *declared filterable* attribute, given by name as a
query parameter and typed as declared (``?field=F1&crop=2``), besides label, model,
confidence and time; a parameter the application does not declare, or a value of
the wrong type, is a 400 naming it. ``GET /v1/apps/{app}/records/{record_id}`` is
one record with every prediction (each head, model, role) and its lineage.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from inferstream.api.auth import Principal, require
from inferstream.api.bodies import TRACE_URL_TEXT, PredictionOut, Result, ResultPage
from inferstream.api.errors import BadRequest, NotFound
from inferstream.api.permissions import roles_for
from inferstream.api.services import services_of
from inferstream.application import AppSpec
from inferstream.store import ResultFilter
from inferstream.store.queries import CURSOR_PATTERN
from inferstream.store.sharing import Sharing
from inferstream.tracing import trace_link

router = APIRouter(tags=["records"])

#: Query parameters every application's record listing takes, beside its attributes.
COMMON = frozenset(
    {"label", "model_version", "min_confidence", "max_confidence", "since", "until",
     "root_id", "cursor", "limit", "order"}
)  # fmt: skip


class LabelOut(BaseModel):
    name: str
    title: str
    colour: str


class HeadOut(BaseModel):
    name: str
    labels: list[LabelOut]


class AttributeOut(BaseModel):
    name: str
    kind: str
    filterable: bool
    client: bool = Field(description="a client may send it at ingest")
    sensitive: bool = Field(default=False, description="stored encrypted at rest; never a filter")
    description: str


class AppOut(BaseModel):
    name: str
    title: str
    subject: str
    group: str | None
    group_noun: str
    source: str | None
    attributes: list[AttributeOut]
    heads: list[HeadOut]
    ratios: list[dict[str, str]]
    content_types: list[str]
    panels: list[str]


class RecordOut(BaseModel):
    record: Result
    predictions: list[PredictionOut]
    image: str | None = Field(
        description="where the ingested item's image is (as PNG); null when a sharing "
        "grant does not let you read it"
    )
    trace_url: str | None = Field(default=None, description=TRACE_URL_TEXT)


def _guard(route: str) -> Any:
    return Depends(require(*roles_for(route)))


def served_app(request: Request, name: str) -> AppSpec:
    apps = {app.name: app for app in services_of(request).apps}
    if name not in apps:
        raise NotFound(f"this API shows {', '.join(apps)}, not {name[:64]!r}")
    return apps[name]


class AppListing(BaseModel):
    name: str
    title: str
    ingests: bool = Field(description="its items can be sent to this API's POST /v1/scans")


@router.get("/v1/apps", response_model=list[AppListing])
def list_apps(
    request: Request, principal: Annotated[Principal, _guard("GET /v1/apps")]
) -> list[AppListing]:
    """The applications whose records this API shows, the pipeline's first."""
    services = services_of(request)
    return [
        AppListing(name=app.name, title=app.title, ingests=app.name == services.app.name)
        for app in services.apps
    ]


@router.get("/v1/apps/{app}", response_model=AppOut)
def describe(
    app: str, request: Request, principal: Annotated[Principal, _guard("GET /v1/apps/{app}")]
) -> AppOut:
    """The application's declaration: what its records hold and how they are shown."""
    spec = served_app(request, app)
    return AppOut(
        name=spec.name, title=spec.title, subject=spec.subject, group=spec.group,
        group_noun=spec.group_noun, source=spec.source,
        attributes=[AttributeOut(name=a.name, kind=a.kind, filterable=a.filterable,
                                 client=a.client, sensitive=a.sensitive,
                                 description=a.description)
                    for a in spec.attributes],
        heads=[HeadOut(name=h.name, labels=[LabelOut(name=label.name, title=label.shown,
                                                     colour=label.colour)
                                            for label in h.labels]) for h in spec.heads],
        ratios=[{"name": r.name, "head": r.head, "label": r.label} for r in spec.ratios],
        content_types=list(spec.content_types), panels=list(spec.panels),
    )  # fmt: skip


@router.get(
    "/v1/apps/{app}/records",
    response_model=ResultPage,
)
def list_records(
    app: str,
    request: Request,
    principal: Annotated[Principal, _guard("GET /v1/apps/{app}/records")],
) -> ResultPage:
    """Records of the application, filtered by its declared attributes and the common
    filters, oldest first; pass ``next_cursor`` as ``cursor`` for the next page."""
    spec = served_app(request, app)
    params = request.query_params
    filters, page = parse_filters(spec, {key: params.getlist(key) for key in params})
    sharing = Sharing(services_of(request).store)
    found = sharing.list_visible(principal.tenant, filters, page["cursor"], page["limit"],
                                 page["order"])  # fmt: skip
    items = [Result.of(seen.row, seen.shared_from) for seen in found.items]
    return ResultPage(items=items, next_cursor=found.next_cursor)


@router.get("/v1/apps/{app}/records/{record_id}", response_model=RecordOut)
def get_record(
    app: str,
    record_id: str,
    request: Request,
    principal: Annotated[Principal, _guard("GET /v1/apps/{app}/records/{record_id}")],
) -> RecordOut:
    """One record with every prediction of it (each head, model and role): your own, or
    one a sharing grant lets you read."""
    served_app(request, app)
    services = services_of(request)
    sharing = Sharing(services.store)
    seen = sharing.get_visible(principal.tenant, record_id)
    if seen is None or seen.row.app != app:
        raise NotFound(f"no record {record_id[:64]!r} of {app!r} in your tenant")
    row = seen.row
    answers = sharing.predictions_of(principal.tenant, seen)
    return RecordOut(
        record=Result.of(row, seen.shared_from),
        predictions=[PredictionOut.of(answer) for answer in answers],
        image=f"/v1/scans/{row.root_id}/image" if seen.images else None,
        trace_url=trace_link(services.settings.trace_url, row.trace_id),
    )


_KINDS = {"str": {"type": "string", "minLength": 1, "maxLength": 512},
          "int": {"type": "integer"}, "float": {"type": "number"}}  # fmt: skip
_TEXT = {"type": "string", "minLength": 1, "maxLength": 512}
_SHARE = {"type": "number", "minimum": 0, "maximum": 1}
_COMMON_SCHEMAS: dict[str, dict[str, Any]] = {
    "label": _TEXT, "model_version": _TEXT, "root_id": _TEXT,
    "min_confidence": _SHARE, "max_confidence": _SHARE,
    "since": {"type": "string", "format": "date-time"},
    "until": {"type": "string", "format": "date-time"},
    "cursor": {"type": "string", "pattern": CURSOR_PATTERN},
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
    "order": {"type": "string", "enum": ["asc", "desc"]},
}  # fmt: skip


def query_parameters(app: AppSpec) -> list[dict[str, Any]]:
    """The listing's query parameters for the OpenAPI document: the common filters and
    each filterable attribute of ``app``, typed as declared."""
    common = [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in _COMMON_SCHEMAS.items()
    ]
    declared = [
        {"name": a.name, "in": "query", "required": False, "schema": _KINDS[a.kind],
         "description": a.description or f"the record's {a.name} ({a.kind})"}
        for a in app.attributes
        if a.filterable
    ]  # fmt: skip
    return common + declared


def parse_filters(
    app: AppSpec, params: dict[str, list[str]]
) -> tuple[ResultFilter, dict[str, Any]]:
    """The store filter and paging of a record listing; 400 naming any bad parameter."""
    filterable = {a.name: a for a in app.attributes if a.filterable}
    sealed = sorted(app.sensitive_attributes.intersection(params))
    if sealed:
        raise BadRequest(
            f"{', '.join(sealed)} of {app.name!r} is sensitive (stored encrypted), so records "
            "cannot be filtered or sorted by it; filter by "
            f"{', '.join(sorted(filterable)) or 'the common filters'} and read it from the "
            "records found"
        )
    unknown = sorted(set(params) - COMMON - set(filterable))
    if unknown:
        raise BadRequest(
            f"{', '.join(n[:64] for n in unknown)} is no filter of {app.name!r}; filter by "
            f"{', '.join(sorted(filterable)) or '(no attribute)'} or {', '.join(sorted(COMMON))}"
        )
    one = {name: _single(name, values) for name, values in params.items()}
    attributes = {name: _typed(filterable[name].kind, name, one[name])
                  for name in one if name in filterable}  # fmt: skip
    special = {app.subject: "subject", app.group: "group", app.source: "source"}
    columns = {special[name]: value for name, value in attributes.items() if name in special}
    filters = ResultFilter(
        app=app.name,
        label=one.get("label"),
        model_version=one.get("model_version"),
        root_id=one.get("root_id"),
        min_confidence=_number(one, "min_confidence"),
        max_confidence=_number(one, "max_confidence"),
        since_us=_time(one, "since"),
        until_us=_time(one, "until"),
        attributes={k: v for k, v in attributes.items() if k not in special},
        **{k: str(v) for k, v in columns.items()},
    )
    order = one.get("order", "asc")
    if order not in ("asc", "desc"):
        raise BadRequest(f"order {order[:16]!r} must be asc or desc")
    limit_text = one.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
        raise BadRequest(f"limit {limit_text[:16]!r} must be a whole number from 1 to 1000")
    limit = int(limit_text)
    return filters, {"cursor": one.get("cursor"), "limit": limit, "order": order}


def _single(name: str, values: list[str]) -> str:
    if len(values) != 1 or not values[0] or len(values[0]) > 512:
        raise BadRequest(f"filter {name[:64]!r} takes one value of 1-512 characters")
    return values[0]


def _typed(kind: str, name: str, value: str) -> str | int | float:
    try:
        return int(value) if kind == "int" else float(value) if kind == "float" else value
    except ValueError:
        raise BadRequest(f"filter {name!r} is {kind}; {value[:64]!r} is not") from None


def _number(values: dict[str, str], name: str) -> float | None:
    if name not in values:
        return None
    try:
        number = float(values[name])
    except ValueError:
        raise BadRequest(f"{name} {values[name][:64]!r} is not a number") from None
    if not 0.0 <= number <= 1.0:  # NaN fails this too
        raise BadRequest(f"{name} {values[name][:64]!r} must be from 0 to 1")
    return number


def _time(values: dict[str, str], name: str) -> int | None:
    if name not in values:
        return None
    try:
        moment = datetime.fromisoformat(values[name])
    except ValueError:
        raise BadRequest(f"{name} {values[name][:64]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise BadRequest(f"{name} {values[name][:64]!r} has no time zone; add e.g. +00:00")
    return int(moment.timestamp() * 1_000_000)
