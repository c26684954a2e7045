"""DICOMweb STOW-RS: ``POST /dicomweb/studies`` stores DICOM instances (PS3.18 10.5).

The body is ``multipart/related; type="application/dicom"``, one Part 10 instance per
part. Each instance is checked exactly as an upload to ``POST /v1/scans`` is, on its
own: the ones that pass are kept and produced (durably on the bus when the answer
goes), the ones that do not are listed with a failure reason. The answer is the
standard one, ``application/dicom+json``: the Referenced SOP Sequence (0008,1199) of
what was stored, each with a Retrieve URL (the scan's status here), and the Failed
SOP Sequence (0008,1198) with a Failure Reason (0008,1197) and, beside the standard,
the reason in words in an Error Comment (0000,0902). 200 when every instance was
stored, 202 when some were, 409 when none was.

The envelope id of an instance is derived from the tenant and its SOP Instance UID,
as the DICOM receiver's is: an instance sent again, by either path, is one record.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from inferstream.admit import source_id
from inferstream.api.auth import Principal, require
from inferstream.api.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from inferstream.api.ingest import Submitted, check_each, read_body, wrap_items
from inferstream.api.permissions import roles_for
from inferstream.api.services import Services, services_of
from inferstream.envelope import Envelope

log = logging.getLogger(__name__)
router = APIRouter(tags=["dicomweb"])
#: Failure reasons (PS3.18 Table I.2-1, PS3.4 C.4.2.1.4).
CANNOT_UNDERSTAND, SOP_CLASS_MISMATCH, STUDY_MISMATCH = 0xC000, 0xA900, 0xC122
DICOM_JSON = "application/dicom+json"
_UID = r"^[0-9]+(\.[0-9]+)*$"
_BODY = {
    "multipart/related": {
        "schema": {"type": "string", "format": "binary"},
        "description": 'multipart/related; type="application/dicom", a Part 10 file a part',
    }
}


@dataclass(frozen=True)
class Part:
    """One instance sent: its bytes, its UIDs as read (empty when unreadable), and what
    was wrong with it, if anything was found before the upload checks."""

    data: bytes
    sop_class: str = ""
    sop_instance: str = ""
    study: str = ""
    problem: str = ""


async def _store(request: Request, principal: Principal, study: str | None) -> JSONResponse:
    state = services_of(request)
    body = await read_body(request, state.settings.max_body_bytes)
    parts = await run_in_threadpool(_parts, request.headers.get("content-type", ""), body, state)
    stored, failed = await run_in_threadpool(_admit, parts, principal, state, study)
    if stored:
        await state.publisher.publish(principal.tenant, [env for _, env in stored])
    base = str(request.base_url).rstrip("/")
    answer: dict[str, Any] = {}
    if stored:
        answer["00081199"] = {"vr": "SQ", "Value": [
            {**_refs(part), "00081190": {"vr": "UR", "Value": [f"{base}/v1/scans/{env.id}"]}}
            for part, env in stored
        ]}  # fmt: skip
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": [
            {**_refs(part), "00081197": {"vr": "US", "Value": [reason]},
             "00000902": {"vr": "LO", "Value": [why[:64]]}}
            for part, reason, why in failed
        ]}  # fmt: skip
    status = 200 if not failed else 202 if stored else 409
    for part, _reason, why in failed:
        log.info("STOW-RS instance refused", extra={"uid": part.sop_instance, "error": why})
    return JSONResponse(answer, status_code=status, media_type=DICOM_JSON)


@router.post(
    "/dicomweb/studies",
    openapi_extra={"requestBody": {"required": True, "content": _BODY}},
    responses={
        200: {"description": "every instance stored", "content": {DICOM_JSON: {}}},
        202: {"description": "some stored, the others failed (listed)"},
        409: {"description": "none stored (each listed with its reason)"},
        413: {"description": "body too large"},
        415: {"description": "not multipart/related of application/dicom"},
    },
)
async def store_instances(
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("POST /dicomweb/studies")))],
) -> JSONResponse:
    """STOW-RS: store DICOM instances (multipart/related; type="application/dicom")."""
    return await _store(request, principal, None)


@router.post(
    "/dicomweb/studies/{study}",
    openapi_extra={"requestBody": {"required": True, "content": _BODY}},
    responses={409: {"description": "none stored"}, 415: {"description": "wrong type"}},
)
async def store_study_instances(
    study: Annotated[str, Path(pattern=_UID, max_length=64, description="Study Instance UID")],
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("POST /dicomweb/studies/{study}")))],
) -> JSONResponse:
    """STOW-RS into one study: an instance of another study fails (0xC122)."""
    return await _store(request, principal, study)


def _parts(content_type: str, body: bytes, state: Services) -> list[Part]:
    """The instances of a multipart/related body, each read for its UIDs."""
    media, options = parse_options_header(content_type)
    if media.lower() != b"multipart/related":
        raise UnsupportedMediaType(
            f"content type {content_type.split(';', 1)[0] or '(none)'!r} is not accepted; "
            'STOW-RS takes multipart/related; type="application/dicom"'
        )
    if not options.get(b"boundary"):
        raise BadRequest("multipart/related needs its boundary parameter in the Content-Type")
    sent = _split(body, options[b"boundary"])
    parts: list[Part] = []
    for i, (kind, data) in enumerate(sent):
        if kind != "application/dicom":
            raise UnsupportedMediaType(
                f"part {i} is {kind or 'of no type'}; STOW-RS here takes application/dicom "
                "parts only"
            )
        parts.append(_read(data))
    if not parts:
        raise BadRequest("the multipart/related body holds no instance")
    if len(parts) > state.settings.max_batch:
        raise PayloadTooLarge(
            f"{len(parts)} instances in one request, over the limit of "
            f"{state.settings.max_batch}; split it"
        )
    return parts


def _split(body: bytes, boundary: bytes) -> list[tuple[str, bytes]]:
    """(content type, bytes) of each part (python-multipart's parser, as Starlette's
    forms use; it takes any multipart body, not only form data)."""
    found: list[tuple[str, bytes]] = []
    header: list[bytes] = [b"", b""]
    kind, chunks = "", bytearray()

    def on_part_begin() -> None:
        nonlocal kind
        kind = ""
        chunks.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        nonlocal kind
        if header[0].strip().lower() == b"content-type":
            kind = parse_options_header(header[1])[0].decode("latin-1").lower()
        header[0], header[1] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.extend(data[start:end])

    def on_part_end() -> None:
        found.append((kind, bytes(chunks)))

    callbacks: Any = {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    }  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"the multipart/related body cannot be parsed: {exc}") from exc
    return found


def _read(data: bytes) -> Part:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                io.BytesIO(data), stop_before_pixels=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
            )  # fmt: skip
        sop_class, instance, study = (
            str(ds.get(k, "") or "") for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
        )
    except Exception as exc:  # pydicom raises many types on damage
        return Part(data, problem=f"not a readable DICOM Part 10 file: {exc}")
    problem = "" if instance else "no SOP Instance UID (0008,0018)"
    return Part(data, sop_class, instance, study, problem)


def _admit(
    parts: list[Part], principal: Principal, state: Services, study: str | None
) -> tuple[list[tuple[Part, Envelope]], list[tuple[Part, int, str]]]:
    """Each instance through the upload's checks on its own (``check_each``); the good
    ones kept and wrapped (produce them), the others with their failure reason, in the
    order sent."""
    failed: list[tuple[int, Part, int, str]] = []
    candidates: list[tuple[int, Part]] = []
    for n, part in enumerate(parts):
        if part.problem:
            failed.append((n, part, CANNOT_UNDERSTAND, part.problem))
        elif study is not None and part.study != study:
            why = f"instance of study {part.study}, not {study}"
            failed.append((n, part, STUDY_MISMATCH, why))
        else:
            candidates.append((n, part))
    items = [
        Submitted(part.data, envelope_id=source_id(principal.tenant, "dicom", part.sop_instance),
                  source="dicomweb")
        for _, part in candidates
    ]  # fmt: skip
    good, refused = check_each(items, state)
    failed += [(candidates[i][0], candidates[i][1], CANNOT_UNDERSTAND, str(exc))
               for i, _, exc in refused]  # fmt: skip
    envelopes = wrap_items([c for _, _, c in good], [item for _, item, _ in good], principal, state)
    stored = [(candidates[i][1], env) for (i, _, _), env in zip(good, envelopes, strict=True)]
    failed.sort(key=lambda failure: failure[0])
    return stored, [(part, code, why) for _, part, code, why in failed]


def _refs(part: Part) -> dict[str, Any]:
    refs: dict[str, Any] = {}
    if part.sop_class:
        refs["00081150"] = {"vr": "UI", "Value": [part.sop_class]}
    if part.sop_instance:
        refs["00081155"] = {"vr": "UI", "Value": [part.sop_instance]}
    return refs


__all__ = ["router"]
