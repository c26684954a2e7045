"""``POST /v1/scans``: scans in, envelopes on the ingest topic, 202 with their ids.

Three bodies are accepted: ``multipart/form-data`` with one or more files (DICOM,
PNG, JPEG, ``.npy``; optional ``tray``/``scanner``/``source`` fields apply to every
file), a raw ``application/dicom`` scan, and ``application/x-protobuf`` carrying an
``EnvelopeBatch`` (the edge agents' path). Every scan is checked before it is
accepted; its bytes are kept in the blob store (for ``/image``) and the accepted
scans are recorded and produced to the bus *before* the 202 is sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from google.protobuf.message import DecodeError
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from inferstream.api.accounts import ScanRecord
from inferstream.api.auth import Principal, require
from inferstream.api.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from inferstream.api.images import CheckedScan, ImageLimits, check_scan
from inferstream.api.permissions import roles_for
from inferstream.blobs import check_in
from inferstream.bus import Record
from inferstream.envelope import Envelope, EnvelopeBatch, new_envelope, new_id, now_us

log = logging.getLogger(__name__)
router = APIRouter(tags=["ingest"])
_FIELD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:^+-]{0,63}")
_BODY_TYPES = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "tray": {"type": "string"},
                "scanner": {"type": "string"},
                "source": {"type": "string"},
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
    state = request.app.state
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _BODY_TYPES:
        raise UnsupportedMediaType(
            f"content type {media or '(none)'!r} is not accepted; send multipart/form-data, "
            "application/dicom or application/x-protobuf"
        )
    body = await read_body(request, state.settings.max_body_bytes)
    if media == "application/x-protobuf":
        envelopes = await run_in_threadpool(_from_protobuf, body, principal, state)
        await run_in_threadpool(_check_adopted, state, envelopes)
    elif media == "application/dicom":
        envelopes = await run_in_threadpool(_accept, [body], principal, {}, state)
    else:
        files, fields = await _parse_form(request, body, state.settings.max_batch)
        envelopes = await run_in_threadpool(_accept, files, principal, fields, state)
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


async def _parse_form(
    request: Request, body: bytes, max_files: int
) -> tuple[list[bytes], dict[str, str]]:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"multipart body is malformed: {exc.message}") from exc
    files: list[bytes] = []
    fields: dict[str, str] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append(await value.read())
            elif name in ("tray", "scanner", "source"):
                fields[name] = _plain(name, value)
    finally:
        await form.close()  # spooled temporary files, even when a field is refused
    if not files:
        raise BadRequest("multipart body has no file parts; attach scans as files")
    return files, fields


def _plain(name: str, value: str) -> str:
    if not _FIELD_RE.fullmatch(value):
        raise BadRequest(f"field {name} {value[:64]!r} must be 1-64 letters, digits or ._:^+-")
    return value


def _accept(
    files: list[bytes], principal: Principal, fields: dict[str, str], state: Any
) -> list[Envelope]:
    """Check every file, then keep each one's bytes and wrap it in an envelope.

    Runs in a worker thread: checking and keeping scans is blocking work that on the
    event loop stalled every other request (reads too).
    """
    limits = ImageLimits(state.settings.max_image_side, state.settings.max_image_pixels)
    checked_all = [check_scan(data, limits) for data in files]
    return [_envelope(checked, principal, fields, state) for checked in checked_all]


def _envelope(
    checked: CheckedScan, principal: Principal, fields: dict[str, str], state: Any
) -> Envelope:
    blob = state.blobs.put(checked.data)
    attributes = {**fields, **checked.attributes, "blob_sha256": blob.sha256}
    attributes.pop("source", None)
    source = fields.get("source") or principal.subject
    env = new_envelope(
        checked.data,
        checked.content_type,
        tenant=principal.tenant,
        key=checked.key,
        source=source,
        attributes=attributes,
    )
    return check_in(env, state.blobs, state.settings.pipeline.claim_check_bytes)


def _from_protobuf(body: bytes, principal: Principal, state: Any) -> list[Envelope]:
    batch = EnvelopeBatch()
    try:
        batch.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BadRequest(f"body is not an inferstream EnvelopeBatch: {exc}") from exc
    if not batch.envelopes:
        raise BadRequest("EnvelopeBatch holds no envelopes")
    if len(batch.envelopes) > state.settings.max_batch:
        raise PayloadTooLarge(
            f"EnvelopeBatch holds {len(batch.envelopes)} envelopes, over the limit of "
            f"{state.settings.max_batch}; split it"
        )
    return [_adopt(env, principal) for env in batch.envelopes]


def _adopt(env: Envelope, principal: Principal) -> Envelope:
    """Take an edge agent's envelope into the caller's tenant with fresh bookkeeping."""
    if env.payload.WhichOneof("body") != "inline" or not env.payload.inline:
        raise BadRequest(
            f"envelope {env.id[:64]!r} must carry its scan inline; blob references "
            "from outside are not accepted"
        )
    if env.id and not _FIELD_RE.fullmatch(env.id):
        raise BadRequest(f"envelope id {env.id[:64]!r} must be 1-64 letters or digits")
    env.tenant = principal.tenant  # never trust the tenant a client claims
    env.id = env.id or new_id()
    env.root_id = env.id
    env.partition_key = env.partition_key or env.id
    env.trace_id = env.trace_id or new_id()
    env.ingested_at_us = now_us()
    env.created_at_us = env.created_at_us or env.ingested_at_us
    env.source = env.source or principal.subject
    return env


class GroupCommit:
    """Scans of concurrent requests recorded and produced together, per tenant.

    A raw DICOM request carries one scan, and recording plus producing it alone cost
    two SQLite commits (two fsyncs) per request: about 45 requests/s in all, whatever
    the CPU, and every waiting request held a worker thread that reads then lacked
    (bench/api_bench.py). Requests arriving while a flush runs join the next one, which
    takes them all: each 202 still waits until its scans are recorded and on the bus.
    """

    def __init__(self, state: Any) -> None:
        self.state = state
        self._pending: dict[str, list[tuple[list[Envelope], asyncio.Future[None]]]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}

    async def publish(self, tenant: str, envelopes: list[Envelope]) -> None:
        """Return once ``envelopes`` are recorded and durably on the ingest topic."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(tenant, []).append((envelopes, future))
        if tenant not in self._flushers:
            self._flushers[tenant] = asyncio.create_task(self._flush(tenant))
        await future

    async def _flush(self, tenant: str) -> None:
        try:
            while batch := self._pending.pop(tenant, []):
                envelopes = [env for group, _ in batch for env in group]
                try:
                    await run_in_threadpool(_record_and_produce, self.state, envelopes)
                except Exception as exc:  # the bus or store failed: every request hears it
                    for _, future in batch:
                        if not future.done():  # done: its client went away meanwhile
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            del self._flushers[tenant]


def _check_adopted(state: Any, envelopes: list[Envelope]) -> None:
    """Check and keep the scans of adopted (protobuf) envelopes, like uploaded ones."""
    limits = ImageLimits(state.settings.max_image_side, state.settings.max_image_pixels)
    for env in envelopes:
        if "blob_sha256" not in env.attributes:
            checked = check_scan(env.payload.inline, limits)
            env.payload.inline = checked.data
            env.attributes.update(checked.attributes)
            env.attributes["blob_sha256"] = state.blobs.put(checked.data).sha256
            env.payload.content_type = checked.content_type
            check_in(env, state.blobs, state.settings.pipeline.claim_check_bytes)


def _record_and_produce(state: Any, envelopes: list[Envelope]) -> None:
    """Record the scans, then produce them; returns once the bus has them durably."""
    state.accounts.record_scans([_record(env) for env in envelopes])
    state.bus.produce(
        state.settings.ingest_topic,
        [Record(env.partition_key.encode(), env.SerializeToString()) for env in envelopes],
    )


def _record(env: Envelope) -> ScanRecord:
    attributes = env.attributes
    return ScanRecord(
        tenant=env.tenant,
        id=env.id,
        content_type=env.payload.content_type,
        size=env.payload.blob.size or len(env.payload.inline),
        blob_sha256=attributes["blob_sha256"],
        egg_id=attributes.get("egg_id"),
        tray=attributes.get("tray"),
        scanner=attributes.get("scanner"),
        source=env.source,
        trace_id=env.trace_id,
        received_at_us=env.ingested_at_us,
    )
