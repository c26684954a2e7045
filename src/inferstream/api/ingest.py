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
client's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from google.protobuf.message import DecodeError
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from inferstream import codecs
from inferstream.api.accounts import ScanRecord
from inferstream.api.auth import Principal, require
from inferstream.api.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from inferstream.api.permissions import roles_for
from inferstream.api.services import Services, services_of
from inferstream.application import AppSpec
from inferstream.bus import Record
from inferstream.codecs import Checked, ImageLimits
from inferstream.envelope import Envelope, EnvelopeBatch, new_envelope, now_us

log = logging.getLogger(__name__)
router = APIRouter(tags=["ingest"])
FIELD_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:^+-]{0,63}$"
_FIELD_RE = re.compile(FIELD_PATTERN)
#: Envelope fields an edge agent may send; tenant and bookkeeping are overwritten.
_ENVELOPE_FIELDS = frozenset(
    {"schema_version", "id", "root_id", "tenant", "partition_key", "source", "created_at_us",
     "ingested_at_us", "attributes", "payload", "trace_id"}
)  # fmt: skip
#: How far in the future a client's clock may put a scan's creation time.
MAX_CLOCK_SKEW_US = 24 * 3600 * 1_000_000
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


class Accepted(BaseModel):
    ids: list[str]
    topic: str


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
    if media == "application/x-protobuf":
        items = await run_in_threadpool(_from_protobuf, body, state)
    elif media == "application/dicom":
        items = [Submitted(body)]
    else:
        items = await _parse_form(request, body, state)
    envelopes = await run_in_threadpool(_accept, items, principal, state)
    await state.publisher.publish(principal.tenant, envelopes)
    for env in envelopes:
        log.info("scan accepted", extra={"scan_id": env.id, "trace_id": env.trace_id})
    return Accepted(ids=[env.id for env in envelopes], topic=state.settings.ingest_topic)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit``."""
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
        raise BadRequest("body is empty; send at least one scan")
    return b"".join(chunks)


async def _parse_form(request: Request, body: bytes, state: Services) -> list[Submitted]:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    max_files, allowed = state.settings.max_batch, state.app.client_attributes
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
    files: list[bytes] = []
    fields: dict[str, str] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append(await value.read())
            elif name in (*allowed, "source"):
                fields[name] = _plain(name, value)
            else:
                raise BadRequest(_unknown_fields(state, [name]))
    finally:
        await form.close()  # spooled temporary files, even when a field is refused
    if not files:
        raise BadRequest("multipart body has no file parts; attach scans as files")
    source = fields.pop("source", "")
    return [Submitted(data, fields, source) for data in files]


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
    if not 0 <= env.created_at_us <= now_us() + MAX_CLOCK_SKEW_US:
        raise BadRequest(f"envelope {name} has created_at_us {env.created_at_us} out of range")
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


def _accept(items: Sequence[Submitted], principal: Principal, state: Services) -> list[Envelope]:
    """Check every scan, then keep each one's bytes and wrap it in an envelope.

    Runs in a worker thread: checking and keeping scans is blocking work that on the
    event loop stalled every other request (reads too).
    """
    limits = ImageLimits(state.settings.max_image_side, state.settings.max_image_pixels)
    app = state.app
    checks, accepted = app.own_checks, app.content_types or None
    checked_all = [codecs.check(item.data, limits, checks, accepted) for item in items]
    return [
        _envelope(checked, item, principal, state)
        for checked, item in zip(checked_all, items, strict=True)
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
    if item.trace_id:
        env.trace_id = item.trace_id
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
