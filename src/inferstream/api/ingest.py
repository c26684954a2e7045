"""``POST /v1/scans``: scans in, envelopes on the ingest topic, 202 with their ids.

Three bodies are accepted: ``multipart/form-data`` with one or more files (DICOM,
PNG, JPEG, ``.npy``, as the application takes; its client attributes and ``source``
as optional fields apply to every file), a raw ``application/dicom`` scan, and
``application/x-protobuf`` carrying an ``EnvelopeBatch`` (the edge agents' path).
All three become the same :class:`Submitted` items and go through one path: every
scan is checked, its content type, attributes, digest and blob reference are derived
here from its bytes (never taken from the client), its bytes are kept in the caller's
tenant's blob folder, and the scans are recorded and produced to the bus *before*
the 202.

A client may name only what it knows better than the scan: an id (stable across
an edge agent's retries; scoped to the caller's tenant), a partition key, a
source, a trace id, a creation time and the attributes its application marks as a
client's. A creation time further ahead of this host's clock than the pipeline's
``max_clock_skew_s`` is refused (400 naming the skew): windows and joins cut by it
(:mod:`inferstream.event_time`). With tracing on, each envelope takes the request's
trace id (unless the client named its own) and the request's span as its parent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from google.protobuf.message import DecodeError
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from inferstream.api.accounts import ScanRecord
from inferstream.api.auth import Principal, require
from inferstream.api.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from inferstream.api.permissions import roles_for
from inferstream.api.services import Services, services_of
from inferstream.application import AppSpec
from inferstream.bus import Record
from inferstream.codecs import Checked, ImageLimits, UnsupportedContent
from inferstream.envelope import Envelope, EnvelopeBatch, new_envelope
from inferstream.errors import InvalidInput
from inferstream.event_time import ClockSkewError, check_event_time
from inferstream.tracing import stamp_ingest

log = logging.getLogger(__name__)
router = APIRouter(tags=["ingest"])
FIELD_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:^+-]{0,63}$"
_FIELD_RE = re.compile(FIELD_PATTERN)
#: Envelope fields an edge agent may send; tenant and bookkeeping are overwritten.
_ENVELOPE_FIELDS = frozenset(
    {"schema_version", "id", "root_id", "tenant", "partition_key", "source", "created_at_us",
     "ingested_at_us", "attributes", "payload", "trace_id"}
)  # fmt: skip
#: A client's field in the schema (the application's own are added per pipeline).
FIELD_SCHEMA = {"type": "string", "pattern": FIELD_PATTERN}
_BODY_TYPES = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "source": FIELD_SCHEMA,
            },
            "required": ["files"],
        }
    },
    "application/dicom": {"schema": {"type": "string", "format": "binary"}},
    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
}


class Refusal(BaseModel):
    """A file of a multipart batch that was refused: which, and why."""

    file: int
    name: str
    status: int
    detail: str


class Accepted(BaseModel):
    ids: list[str]
    topic: str
    #: Files of a multipart batch refused while the others were accepted.
    refused: list[Refusal] = []


@dataclass(frozen=True)
class Submitted:
    """One scan as a client sent it: its bytes and what a client may say of it (checked)."""

    data: bytes
    fields: dict[str, str] = field(default_factory=dict)
    source: str = ""
    envelope_id: str = ""
    key: str = ""
    trace_id: str = ""
    created_at_us: int = 0
    #: How an error names this item to the client (``files[2] 'cat.png'``); "" for none.
    label: str = ""
    #: The client's file name (multipart), for a per-file answer.
    name: str = ""


@dataclass(frozen=True)
class Upload:
    """One file part of a multipart body: its field name, the client's file name, bytes."""

    field: str
    filename: str
    data: bytes


@dataclass(frozen=True)
class Form:
    """A parsed multipart body: its file parts and its plain fields, in the order sent."""

    files: list[Upload]
    fields: list[tuple[str, str]]


@router.post(
    "/v1/scans",
    status_code=202,
    response_model=Accepted,
    openapi_extra={"requestBody": {"required": True, "content": _BODY_TYPES}},
    responses={413: {"description": "body too large"}, 415: {"description": "wrong type"}},
)
async def ingest_scans(
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("POST /v1/scans")))],
) -> Accepted:
    """Accept scans; they are durably on the ingest topic when this answers 202."""
    state = services_of(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _BODY_TYPES:
        raise UnsupportedMediaType(
            f"content type {media or '(none)'!r} is not accepted; send multipart/form-data, "
            "application/dicom or application/x-protobuf"
        )
    body = await read_body(request, state.settings.max_body_bytes)
    # The blocking work (checks, the scans' blobs) runs in the group commit's thread.
    prepare: Callable[[], tuple[list[Envelope], list[Refusal]]]
    if media == "application/x-protobuf":
        prepare = partial(_accept_all, lambda: _from_protobuf(body, state), principal, state)
    elif media == "application/dicom":
        prepare = partial(_accept_all, lambda: [Submitted(body)], principal, state)
    else:  # a batch of files: each accepted or refused on its own
        items = await _parse_form(request, body, state)
        prepare = partial(_accept_each, items, principal, state)
    envelopes, refused = await state.publisher.publish_prepared(principal.tenant, prepare)
    for env in envelopes:
        log.info("scan accepted", extra={"scan_id": env.id, "trace_id": env.trace_id})
    return Accepted(
        ids=[env.id for env in envelopes], topic=state.settings.ingest_topic, refused=refused
    )


async def read_body(
    request: Request, limit: int, empty: str = "body is empty; send at least one scan"
) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit``, and
    with 400 saying ``empty`` when there is none."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes; send fewer files")
        chunks.append(chunk)
    if not size:
        raise BadRequest(empty)
    return b"".join(chunks)


async def parse_form(request: Request, body: bytes, max_files: int) -> Form:
    """The file parts and fields of a multipart ``body`` (read with :func:`read_body`);
    413 past ``max_files`` files or 16 fields, 400 when it is malformed."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith(("Too many files", "Too many fields")):
            raise PayloadTooLarge(
                f"multipart body has too many parts: at most {max_files} files and 16 "
                "fields per request; split it"
            ) from exc
        raise BadRequest(f"multipart body is malformed: {exc.message}") from exc
    parsed = Form([], [])
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                parsed.files.append(Upload(name, value.filename or "", await value.read()))
            else:
                parsed.fields.append((name, value))
    finally:
        await form.close()  # spooled temporary files
    return parsed


async def _parse_form(request: Request, body: bytes, state: Services) -> list[Submitted]:
    form = await parse_form(request, body, state.settings.max_batch)
    allowed = (*state.app.client_attributes, "source")
    unknown = [name for name, _ in form.fields if name not in allowed]
    if unknown:
        raise BadRequest(_unknown_fields(state, unknown[:1]))
    fields = {name: _plain(name, value) for name, value in form.fields}
    if not form.files:
        raise BadRequest("multipart body has no file parts; attach scans as files")
    source = fields.pop("source", "")
    return [
        Submitted(upload.data, fields, source, name=upload.filename[:128]) for upload in form.files
    ]


def _plain(name: str, value: str) -> str:
    if not _FIELD_RE.fullmatch(value):
        raise BadRequest(f"{name} {value[:64]!r} must be 1-64 letters, digits or ._:^+-")
    return value


def _unknown_fields(state: Services, names: Sequence[str]) -> str:
    allowed = ", ".join(state.app.client_attributes) or "none"
    return (
        f"field(s) {', '.join(n[:64] for n in names)} may not be sent to application "
        f"{state.app.name!r}; a client may set {allowed} (and source); the rest is read "
        "from the content"
    )


def _from_protobuf(body: bytes, state: Services) -> list[Submitted]:
    max_batch = state.settings.max_batch
    batch = EnvelopeBatch()
    try:
        batch.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BadRequest(f"body is not an inferstream EnvelopeBatch: {exc}") from exc
    if not batch.envelopes:
        raise BadRequest("EnvelopeBatch holds no envelopes")
    if len(batch.envelopes) > max_batch:
        raise PayloadTooLarge(
            f"EnvelopeBatch holds {len(batch.envelopes)} envelopes, over the limit of "
            f"{max_batch}; split it"
        )
    return [_submitted(env, state) for env in batch.envelopes]


def _submitted(env: Envelope, state: Services) -> Submitted:
    """What an edge agent's envelope may say, checked; the rest is derived or refused."""
    name = repr(env.id[:64]) if env.id else "without an id"
    extra = sorted(fd.name for fd, _ in env.ListFields() if fd.name not in _ENVELOPE_FIELDS)
    if extra:
        raise BadRequest(
            f"envelope {name} sets {', '.join(extra)}; a client may not (predictions, "
            "lineage and errors are the pipeline's to write)"
        )
    if env.payload.WhichOneof("body") != "inline" or not env.payload.inline:
        raise BadRequest(
            f"envelope {name} must carry its scan inline; blob references from outside "
            "are not accepted"
        )
    unknown = sorted(set(env.attributes) - set(state.app.client_attributes))
    if unknown:
        raise BadRequest(f"envelope {name}: {_unknown_fields(state, unknown)}")
    try:
        check_event_time(env.created_at_us, state.settings.pipeline.max_clock_skew_s)
    except ClockSkewError as exc:
        raise BadRequest(f"envelope {name}: {exc}") from exc
    return Submitted(
        data=env.payload.inline,
        fields={key: _plain(key, value) for key, value in env.attributes.items()},
        source=_optional("envelope source", env.source),
        envelope_id=_optional("envelope id", env.id),
        key=_optional("envelope partition_key", env.partition_key),
        trace_id=_optional("envelope trace_id", env.trace_id),
        created_at_us=env.created_at_us,
    )


def _optional(name: str, value: str) -> str:
    return _plain(name, value) if value else ""


def _accept_all(
    parse: Callable[[], list[Submitted]], principal: Principal, state: Services
) -> tuple[list[Envelope], list[Refusal]]:
    """:func:`_accept` of what ``parse`` finds in the body: every scan or none."""
    return _accept(parse(), principal, state), []


def _accept(items: Sequence[Submitted], principal: Principal, state: Services) -> list[Envelope]:
    """Check every scan, then keep each one's bytes and wrap it in an envelope.

    Runs in a worker thread: checking and keeping scans is blocking work that on the
    event loop stalled every other request (reads too).
    """
    _within_share(items, principal, state)
    return wrap_items(check_items(items, state), items, principal, state)


def _accept_each(
    items: Sequence[Submitted], principal: Principal, state: Services
) -> tuple[list[Envelope], list[Refusal]]:
    """Each file checked on its own: the good ones kept and wrapped, the others listed
    with why. Nothing accepted: the refusal as an error (all the files' reasons)."""
    _within_share(items, principal, state)
    good, refused = check_each(items, state)
    if not good:
        if len(refused) == 1:
            raise refused[0][2]
        said = "; ".join(f"files[{i}] {item.name!r}: {exc}" for i, item, exc in refused)
        every_type = all(isinstance(exc, UnsupportedContent) for _, _, exc in refused)
        raise (UnsupportedContent if every_type else InvalidInput)(f"no file accepted: {said}")
    envelopes = wrap_items([c for _, _, c in good], [i for _, i, _ in good], principal, state)
    refusals = [
        Refusal(file=i, name=item.name, detail=str(exc),
                status=415 if isinstance(exc, UnsupportedContent) else 400)
        for i, item, exc in refused
    ]  # fmt: skip
    return envelopes, refusals


def _within_share(items: Sequence[Submitted], principal: Principal, state: Services) -> None:
    """Spend the tenant's quota on these scans, before any work is done on them: 429
    when the tenant is over its share (the whole request; its client tries again)."""
    if state.tenant_quota is not None:
        state.tenant_quota.take(principal.tenant, len(items))


def check_each(
    items: Sequence[Submitted], state: Services
) -> tuple[list[tuple[int, Submitted, Checked]], list[tuple[int, Submitted, InvalidInput]]]:
    """Each item checked on its own (blocking): (position, item, checked) of those that
    pass, (position, item, why) of those that do not. Nothing is kept yet."""
    limits = ImageLimits(state.settings.max_image_side, state.settings.max_image_pixels)
    good, refused = [], []
    for i, item in enumerate(items):
        try:
            good.append((i, item, _check_one(item, limits, state.app)))
        except InvalidInput as exc:
            refused.append((i, item, exc))
    return good, refused


def check_items(items: Sequence[Submitted], state: Services) -> list[Checked]:
    """Every item checked through its codec and the application's own checks (blocking);
    400 or 415 naming the item by its label. Nothing is kept yet."""
    limits = ImageLimits(state.settings.max_image_side, state.settings.max_image_pixels)
    return [_check_one(item, limits, state.app) for item in items]


def _check_one(item: Submitted, limits: ImageLimits, app: AppSpec) -> Checked:
    try:
        return app.check_upload(item.data, limits)
    except InvalidInput as exc:
        if not item.label:
            raise
        kind = UnsupportedContent if isinstance(exc, UnsupportedContent) else InvalidInput
        raise kind(f"{item.label}: {exc}") from exc


def wrap_items(
    checked: Sequence[Checked], items: Sequence[Submitted], principal: Principal, state: Services
) -> list[Envelope]:
    """Keep each checked item's bytes in the caller's tenant's blobs and wrap it in its
    ingest envelope (blocking); produce them with ``state.publisher``."""
    return [
        _envelope(one, item, principal, state) for one, item in zip(checked, items, strict=True)
    ]


def _envelope(checked: Checked, item: Submitted, principal: Principal, state: Services) -> Envelope:
    """The ingest envelope: everything but the client's few fields derived from the scan."""
    blob = state.blobs.put(checked.data, principal.tenant)
    env = new_envelope(
        checked.data,
        checked.content_type,
        tenant=principal.tenant,
        key=checked.key or item.key,
        source=item.source or principal.subject,
        attributes={**item.fields, **checked.attributes, "blob_sha256": blob.sha256},
        envelope_id=item.envelope_id or None,
        created_at_us=item.created_at_us or None,
    )
    stamp_ingest(env, item.trace_id)  # the request's trace, or the client's own id
    if len(checked.data) > state.settings.pipeline.claim_check_bytes:
        env.payload.blob.CopyFrom(blob)  # the claim check: the bus carries the reference
    return env


def record_and_produce(state: Services, envelopes: list[Envelope]) -> None:
    """Record the scans, then produce them; returns once the bus has them durably.

    When the bus refuses them (down, disk full) the scans this call recorded are
    forgotten again, so a scan answered 503 never shows as queued forever.
    """
    recorded = state.accounts.record_scans([_record(env, state.app) for env in envelopes])
    try:
        state.bus.produce(
            state.settings.ingest_topic,
            [Record(env.partition_key.encode(), env.SerializeToString()) for env in envelopes],
        )
    except Exception:
        _forget(state, envelopes[0].tenant, recorded)
        raise


def _forget(state: Services, tenant: str, scan_ids: list[str]) -> None:
    try:
        state.accounts.forget_scans(tenant, scan_ids)
    except Exception as exc:  # the store may be what failed; the 503 stands either way
        log.warning("refused scans stay recorded", extra={"error": str(exc)})


def _record(env: Envelope, app: AppSpec) -> ScanRecord:
    attributes = env.attributes
    return ScanRecord(
        tenant=env.tenant,
        id=env.id,
        content_type=env.payload.content_type,
        size=env.payload.blob.size or len(env.payload.inline),
        blob_sha256=attributes["blob_sha256"],
        subject=attributes.get(app.subject),
        group=attributes.get(app.group) if app.group else None,
        device=attributes.get(app.source) if app.source else None,
        source=env.source,
        trace_id=env.trace_id,
        received_at_us=env.ingested_at_us,
    )
