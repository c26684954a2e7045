"""imageops' HTTP routes, mounted by the API under ``/v1/apps/imageops``.

- ``POST /jobs``: multipart ``files`` (PNG, JPEG, WebP) and one ``actions`` field
  (:mod:`.operations`). Everything is checked before anything is queued: the
  document (400 naming the field and the operation's position), each file (415 for
  what is not an image, 400 for a corrupt one, both naming ``files[i]``), each plan
  against each image's size (400), the body and the counts (413). Then the images go
  through the core's one ingest path (kept under the tenant, recorded, produced) and
  the answer is 202 with the job id, each file's id and how many outputs it will make.
- ``GET /jobs/{job}``: the job and each file queued, running, done or failed (with
  the reason), and a download link for every output.
- ``GET /jobs/{job}/outputs/{name}``: one output's bytes; 410 once its retention ended.

A file's id is ``<job>.<index>`` and an output's name ``<index>-<stem>-<tile>.<ext>``,
so jobs with the same file names never meet, and the bytes are content-addressed.
Every read is scoped to the caller's tenant (another tenant's job is not found).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from inferstream.api import ingest
from inferstream.api.app_routes import AppRoutes, guard
from inferstream.api.auth import Principal
from inferstream.api.errors import BadRequest, Gone, NotFound, PayloadTooLarge, UnsupportedMediaType
from inferstream.api.ingest import Form, Submitted
from inferstream.api.permissions import INGEST, ROLES, Role
from inferstream.api.services import Services, services_of
from inferstream.apps.imageops import APP
from inferstream.apps.imageops.operations import CONTENT_TYPES, ActionsError, Plan, parse_actions
from inferstream.envelope import BlobRef, Envelope, new_id, now_us
from inferstream.errors import BlobError
from inferstream.store import ResultFilter, ResultRow, ResultsStore

#: Files one job may hold, and outputs it may make (over either: 413).
MAX_FILES = 64
MAX_OUTPUTS = 4096
PREFIX = f"/v1/apps/{APP.name}"
#: Whoever may submit a job may follow it and fetch its outputs: a client program
#: (role device) as much as a person.
_EVERYONE: frozenset[Role] = frozenset(ROLES)
PERMISSIONS: dict[str, frozenset[Role]] = {
    "POST /jobs": INGEST,
    "GET /jobs/{job}": _EVERYONE,
    "GET /jobs/{job}/outputs/{name}": _EVERYONE,
}
_JOB = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FileState = Literal["queued", "running", "done", "failed"]

router = APIRouter(tags=["imageops"])


class FileAccepted(BaseModel):
    id: str = Field(description="the file's id (`<job>.<index>`): GET /v1/scans/{id} too")
    index: int
    name: str
    width: int
    height: int
    outputs: int = Field(description="how many outputs its operations make")


class JobAccepted(BaseModel):
    job: str
    status_url: str
    actions: dict[str, Any] = Field(description="the operations in their full form")
    outputs: int
    files: list[FileAccepted]


class OutputOut(BaseModel):
    name: str
    id: str = Field(description="the output's record id (deterministic)")
    tile: int
    width: int
    height: int
    format: str
    bytes: int
    sha256: str
    url: str
    expires_at: datetime
    expired: bool


class FileStatus(BaseModel):
    id: str
    index: int
    name: str
    status: FileState
    outputs_expected: int | None = Field(description="known once the first output is stored")
    outputs: list[OutputOut]
    error: str | None = None


class JobStatus(BaseModel):
    job: str
    status: FileState
    submitted_at: datetime
    expires_at: datetime | None
    expired: bool
    actions: dict[str, Any] | None
    files: list[FileStatus]


_BODY = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "actions": {
                    "type": "string",
                    "description": 'JSON: {"operations": [["resize", "200x300"], '
                    '["split", true], ["blur", "gaussian"]], "output": "jpg"}',
                },
            },
            "required": ["files", "actions"],
        }
    }
}


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    openapi_extra={"requestBody": {"required": True, "content": _BODY}},
    responses={413: {"description": "body, files or outputs over the limits"}},
)
async def submit_job(
    request: Request,
    response: Response,
    principal: Annotated[Principal, guard(PERMISSIONS, "POST /jobs")],
) -> JobAccepted:
    """Queue a job: its images and actions are checked first, then durably queued."""
    state = services_of(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content type {media or '(none)'!r} is not accepted; send multipart/form-data "
            "with the images as files and the operations as actions"
        )
    body = await ingest.read_body(request, state.settings.max_body_bytes)
    form = await ingest.parse_form(request, body, min(MAX_FILES, state.settings.max_batch))
    plan = _plan_of(form)
    job = new_id()
    items = [_item(job, index, upload, plan) for index, upload in enumerate(_uploads_of(form))]
    envelopes = await run_in_threadpool(_accept, items, plan, principal, state)
    await state.publisher.publish(principal.tenant, envelopes)
    response.headers["Location"] = f"{PREFIX}/jobs/{job}"
    files = [_accepted(env, plan) for env in envelopes]
    return JobAccepted(
        job=job, status_url=f"{PREFIX}/jobs/{job}", actions=plan.document(),
        outputs=sum(f.outputs for f in files), files=files,
    )  # fmt: skip


def _plan_of(form: Form) -> Plan:
    names = [name for name, _ in form.fields]
    unknown = sorted(set(names) - {"actions"})
    if unknown:
        raise BadRequest(
            f"{unknown[0][:64]}: no such field; send the images as files and the operations "
            "as actions"
        )
    if names.count("actions") != 1:
        raise BadRequest(
            "actions: send exactly one actions field, e.g. "
            '{"operations": [["resize", "200x300"]], "output": "jpg"}'
        )
    return parse_actions(form.fields[0][1])


def _uploads_of(form: Form) -> list[ingest.Upload]:
    strays = [upload.field for upload in form.files if upload.field != "files"]
    if strays:
        raise BadRequest(f"{strays[0][:64]}: attach every image as a part named files")
    if not form.files:
        raise BadRequest("files: no images; attach one or more as parts named files")
    return form.files


def _item(job: str, index: int, upload: ingest.Upload, plan: Plan) -> Submitted:
    name = _display_name(upload.filename, index)
    fields = {"job": job, "file": name, "file_index": str(index), "actions": plan.to_json()}
    return Submitted(upload.data, fields, envelope_id=f"{job}.{index}",
                     label=f"files[{index}] {name!r}")  # fmt: skip


def _display_name(filename: str, index: int) -> str:
    """The client's file name without folders or control characters (at most 128)."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return _CONTROL.sub("", base).strip()[:128] or f"image-{index}"


def _accept(
    items: Sequence[Submitted], plan: Plan, principal: Principal, state: Services
) -> list[Envelope]:
    """Check each image and the plan against its size, then keep and wrap them all
    (blocking work, in a thread): nothing is kept of a job that is refused."""
    checked = ingest.check_items(items, state)
    total = 0
    for item, one in zip(items, checked, strict=True):
        width, height = int(one.attributes["width"]), int(one.attributes["height"])
        try:
            total += len(plan.output_sizes(width, height))
        except ActionsError as exc:
            raise ActionsError(f"{item.label} is {width}x{height}: {exc}") from None
    if total > MAX_OUTPUTS:
        raise PayloadTooLarge(
            f"the job makes {total} outputs, over the limit of {MAX_OUTPUTS}; send its images "
            "in several jobs"
        )
    return ingest.wrap_items(checked, items, principal, state)


def _accepted(env: Envelope, plan: Plan) -> FileAccepted:
    attributes = env.attributes
    width, height = int(attributes["width"]), int(attributes["height"])
    return FileAccepted(
        id=env.id, index=int(attributes["file_index"]), name=attributes["file"], width=width,
        height=height, outputs=len(plan.output_sizes(width, height)),
    )  # fmt: skip


# -- status -----------------------------------------------------------------------------


@router.get("/jobs/{job}", response_model=JobStatus)
def job_status(
    job: str,
    request: Request,
    principal: Annotated[Principal, guard(PERMISSIONS, "GET /jobs/{job}")],
) -> JobStatus:
    """The job, each of its files and a download link for each output."""
    state = services_of(request)
    tenant = principal.tenant
    files = _files_of(state, tenant, job)
    made = _outputs_of(state.store, tenant, job)
    now = now_us()
    statuses = [_file_status(state, tenant, scan, made.get(scan.id, []), now) for scan in files]
    outputs = [row for rows in made.values() for row in rows]
    expiry = min((int(row.attributes["expires_at_us"]) for row in outputs), default=None)
    return JobStatus(
        job=job, status=_job_state([f.status for f in statuses]),
        submitted_at=_time(min(scan.received_at_us for scan in files)),
        expires_at=None if expiry is None else _time(expiry),
        expired=expiry is not None and expiry <= now,
        actions=parse_actions(outputs[0].attributes["actions"]).document() if outputs else None,
        files=statuses,
    )  # fmt: skip


def _files_of(state: Services, tenant: str, job: str) -> list[Any]:
    if not _JOB.fullmatch(job):
        raise NotFound(f"no job {job[:64]!r} in your tenant")
    found = state.accounts.find_scans(tenant, [f"{job}.{index}" for index in range(MAX_FILES)])
    if not found:
        raise NotFound(f"no job {job!r} in your tenant")
    return sorted(found, key=lambda scan: _index(scan.id))


def _index(file_id: str) -> int:
    return int(file_id.rpartition(".")[2])


def _outputs_of(store: ResultsStore, tenant: str, job: str) -> dict[str, list[ResultRow]]:
    """The job's stored outputs by the id of the file they came from, in tile order."""
    of_job = ResultFilter(app=APP.name, group=job)
    made: dict[str, list[ResultRow]] = {}
    cursor: str | None = None
    while True:
        page = store.list_results(tenant, of_job, cursor, 1000)
        for row in page.items:
            made.setdefault(row.root_id, []).append(row)
        cursor = page.next_cursor
        if cursor is None:
            break
    return {root: sorted(rows, key=lambda r: r.attributes["tile"]) for root, rows in made.items()}


def _file_status(
    state: Services, tenant: str, scan: Any, rows: list[ResultRow], now: int
) -> FileStatus:
    expected = int(rows[0].attributes["tiles"]) if rows else None
    status: FileState = "done" if rows and len(rows) >= (expected or 0) else "queued"
    error = None
    if status != "done":
        letter = state.accounts.dead_letter_of(tenant, scan.id)
        if letter is not None:
            status, error = "failed", f"{letter['stage']}: {letter['message']}"
        elif rows:
            status = "running"
    return FileStatus(
        id=scan.id, index=_index(scan.id), name=scan.subject or "", status=status,
        outputs_expected=expected, outputs=[_output(row, now) for row in rows], error=error,
    )  # fmt: skip


def _output(row: ResultRow, now: int) -> OutputOut:
    a = row.attributes
    expires = int(a["expires_at_us"])
    return OutputOut(
        name=a["output"], id=row.id, tile=a["tile"], width=a["width"], height=a["height"],
        format=a["format"], bytes=a["bytes"], sha256=a["sha256"],
        url=f"{PREFIX}/jobs/{row.group}/outputs/{a['output']}", expires_at=_time(expires),
        expired=expires <= now,
    )  # fmt: skip


def _job_state(states: Sequence[FileState]) -> FileState:
    if all(state == "done" for state in states):
        return "done"
    if all(state in ("done", "failed") for state in states):
        return "failed"
    if all(state == "queued" for state in states):
        return "queued"
    return "running"


def _time(at_us: int) -> datetime:
    return datetime.fromtimestamp(at_us / 1_000_000, UTC)


# -- outputs ----------------------------------------------------------------------------

_IMAGES = {"content": {kind: {} for kind in CONTENT_TYPES.values()}, "description": "the output"}


@router.get(
    "/jobs/{job}/outputs/{name}",
    response_class=Response,
    responses={200: _IMAGES, 410: {"description": "its retention is over"}},
)
def download_output(
    job: str,
    name: str,
    request: Request,
    principal: Annotated[Principal, guard(PERMISSIONS, "GET /jobs/{job}/outputs/{name}")],
) -> Response:
    """One output's bytes, while its retention lasts."""
    state = services_of(request)
    row = _find_output(state.store, principal.tenant, job, name)
    a = row.attributes
    expires = int(a["expires_at_us"])
    if expires <= now_us():
        raise Gone(
            f"output {name!r} of job {job!r} expired at {_time(expires).isoformat()}; outputs "
            "are kept for the pipeline's retention_hours after their job was submitted"
        )
    try:  # the digest is read under the caller's tenant only: never another's bytes
        data = state.blobs.get(BlobRef(uri="", sha256=a["sha256"], size=a["bytes"]),
                               principal.tenant)  # fmt: skip
    except BlobError as exc:
        raise NotFound(f"the bytes of output {name!r} are gone from the blob store") from exc
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "ETag": f'"{a["sha256"]}"',
        "Cache-Control": "private, max-age=3600",
    }
    return Response(data, media_type=CONTENT_TYPES[a["format"]], headers=headers)


def _find_output(store: ResultsStore, tenant: str, job: str, name: str) -> ResultRow:
    if _JOB.fullmatch(job) and _NAME.fullmatch(name):
        one = ResultFilter(app=APP.name, group=job, attributes={"output": name})
        found = store.list_results(tenant, one, limit=1).items
        if found:
            return found[0]
    raise NotFound(f"no output {name[:128]!r} of job {job[:64]!r} in your tenant")


def make_routes() -> AppRoutes:
    """The ``routes`` hook of :data:`inferstream.apps.imageops.APP`."""
    return AppRoutes(router, PERMISSIONS)
