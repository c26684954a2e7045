"""The v2 inference protocol over HTTP (KServe's Open Inference Protocol, Triton's
HTTP/REST API): the models the pipeline serves, tensor in, tensor out, so an existing
client such as ``tritonclient.http`` works against the API.

A model's name is the registry's (``egg_sexing``); without ``/versions/{version}`` it is
the version the pipeline serves now (what ``GET /v1/models`` lists), with it any version
the caller's tenant may see (:mod:`inferstream.api.served_models`). Inputs and outputs
are the ONNX graph's: the raw tensor model, whose input is the preprocessed tensor, not
a DICOM. Requests are JSON or JSON followed by tensor bytes (Triton's binary tensor data
extension, what ``tritonclient`` sends by default); :mod:`inferstream.api.v2_tensors`
decodes and checks them. Inference runs in a worker thread on the graph loaded once per
process.

Errors are the protocol's ``{"error": "<what happened and what to do>"}``
(:func:`error_response`, which the app's handlers use for every path under ``/v2``).
The health routes are public like ``/healthz``; the others need a credential of a role
that may read models (:mod:`inferstream.api.permissions`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from inferstream import __version__
from inferstream.api.auth import Principal, require
from inferstream.api.errors import BadRequest, NotFound, Unavailable, UnsupportedMediaType
from inferstream.api.ingest import read_body
from inferstream.api.permissions import roles_for
from inferstream.api.served_models import ServedVersion, resolve
from inferstream.api.services import Services, services_of
from inferstream.api.v2_tensors import NUMPY, Graph, encode_answer, parse_request
from inferstream.errors import ModelError
from inferstream.registry import NAME_RE, ModelRegistry, RegistryError

router = APIRouter(tags=["v2 inference protocol"])
PREFIX = "/v2"
#: What model metadata names as the platform (Triton's name for ONNX Runtime models).
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]
#: The largest inference request body (the API's ``max_body_bytes`` when smaller): a
#: JSON body of 16 MiB is about 1.4 million numbers, parsed into Python objects first.
MAX_INFER_BYTES = 16 * 1024 * 1024
HEADER_LENGTH = "Inference-Header-Content-Length"

ModelName = Annotated[str, Path(pattern=f"^{NAME_RE.pattern}$", description="a served model")]
Version = Annotated[str, Path(pattern=f"^{NAME_RE.pattern}$", description="a registered version")]


class V2Error(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


#: Documented on every guarded v2 route: the protocol's error body.
V2_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": text}
    for status, text in {
        400: "bad input (named)",
        401: "no or wrong credentials",
        403: "role not allowed",
        404: "no such model or version for you",
        413: "body or batch too large",
        415: "compressed body",
        429: "rate limited",
        503: "store or model unavailable",
    }.items()
}
_EMPTY_OK: dict[int | str, dict[str, Any]] = {200: {"description": "yes (4xx/503: no)"}}
_GUARDED_EMPTY_OK = _EMPTY_OK | V2_ERRORS

_TENSOR: dict[str, Any] = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "datatype": {"type": "string", "enum": sorted(NUMPY)},
        "parameters": {"type": "object", "description": "binary_data_size: its bytes follow"},
        "data": {"type": "array", "description": "row-major values, flat or nested"},
    },
}
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                }
            }
        },
    }
}
_INFER_ANSWERS: dict[int | str, dict[str, Any]] = V2_ERRORS | {
    200: {
        "description": "the outputs; with binary outputs, their bytes follow the JSON "
        f"({HEADER_LENGTH} is its length)",
        "content": {"application/octet-stream": {}},
    }
}


def speaks_v2(path: str) -> bool:
    """Whether a request path is the v2 protocol's (errors answer its way)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(status: int, detail: Any, headers: dict[str, str] | None) -> JSONResponse:
    """The protocol's error body; a request that fails validation is a 400 there."""
    if not isinstance(detail, str):  # FastAPI's list of validation errors
        detail = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', item)}"
            for item in detail
        )
    return JSONResponse({"error": detail}, status_code=400 if status == 422 else status,
                        headers=headers)  # fmt: skip


@router.get("/v2/health/live", response_class=Response, responses=_EMPTY_OK)
def live() -> Response:
    """The process is up."""
    return Response(status_code=200)


@router.get(
    "/v2/health/ready",
    response_class=Response,
    responses=_EMPTY_OK | {503: V2_ERRORS[503]},
)
def ready(request: Request) -> Response:
    """The store, where the registry lives, answers; 503 otherwise."""
    services_of(request).check_store()
    return Response(status_code=200)


@router.get("/v2", response_model=ServerMetadata, responses=V2_ERRORS)
def server_metadata(
    _: Annotated[Principal, Depends(require(*roles_for("GET /v2")))],
) -> ServerMetadata:
    """The server's name, version and protocol extensions."""
    return ServerMetadata(name="inferstream", version=__version__, extensions=EXTENSIONS)


@router.get("/v2/models/{name}", response_model=ModelMetadata, responses=V2_ERRORS)
def model_metadata(
    name: ModelName,
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("GET /v2/models/{name}")))],
) -> ModelMetadata:
    """The model the pipeline serves under ``name``: its versions, inputs and outputs."""
    return _metadata(*_loaded(services_of(request), principal, name, None))


@router.get(
    "/v2/models/{name}/versions/{version}", response_model=ModelMetadata, responses=V2_ERRORS
)
def version_metadata(
    name: ModelName,
    version: Version,
    request: Request,
    principal: Annotated[
        Principal, Depends(require(*roles_for("GET /v2/models/{name}/versions/{version}")))
    ],
) -> ModelMetadata:
    """One version of a served model (the deployment's or your tenant's own)."""
    return _metadata(*_loaded(services_of(request), principal, name, version))


@router.get("/v2/models/{name}/ready", response_class=Response, responses=_GUARDED_EMPTY_OK)
def model_ready(
    name: ModelName,
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("GET /v2/models/{name}/ready")))],
) -> Response:
    """200 once the model is loaded (this loads it); 404 or 503 otherwise."""
    _loaded(services_of(request), principal, name, None)
    return Response(status_code=200)


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    response_class=Response,
    responses=_GUARDED_EMPTY_OK,
)
def version_ready(
    name: ModelName,
    version: Version,
    request: Request,
    principal: Annotated[
        Principal,
        Depends(require(*roles_for("GET /v2/models/{name}/versions/{version}/ready"))),
    ],
) -> Response:
    """200 once the version is loaded (this loads it); 404 or 503 otherwise."""
    _loaded(services_of(request), principal, name, version)
    return Response(status_code=200)


@router.post(
    "/v2/models/{name}/infer",
    response_model=InferResponse,
    responses=_INFER_ANSWERS,
    openapi_extra=_INFER_BODY,
)
async def infer(
    name: ModelName,
    request: Request,
    principal: Annotated[Principal, Depends(require(*roles_for("POST /v2/models/{name}/infer")))],
) -> Response:
    """Run the model the pipeline serves on the request's tensors."""
    return await _infer(request, principal, name, None)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    response_model=InferResponse,
    responses=_INFER_ANSWERS,
    openapi_extra=_INFER_BODY,
)
async def infer_version(
    name: ModelName,
    version: Version,
    request: Request,
    principal: Annotated[
        Principal,
        Depends(require(*roles_for("POST /v2/models/{name}/versions/{version}/infer"))),
    ],
) -> Response:
    """Run one version of a served model on the request's tensors."""
    return await _infer(request, principal, name, version)


def _loaded(
    services: Services, principal: Principal, name: str, version: str | None
) -> tuple[ServedVersion, Graph]:
    """The version the caller asks for, loaded; 404 when it may not see it."""
    registry = ModelRegistry(services.store, services.blobs)
    try:
        served = resolve(services.settings.pipeline, registry, name, version, principal.tenant)
        return served, services.graphs.get(served, registry)
    except RegistryError as exc:
        raise (NotFound if exc.status == 404 else BadRequest)(str(exc)) from exc
    except ModelError as exc:
        raise Unavailable(f"model {name} cannot be served: {exc}") from exc


def _metadata(served: ServedVersion, graph: Graph) -> ModelMetadata:
    return ModelMetadata(
        name=served.name,
        versions=list(served.versions),
        platform=PLATFORM,
        inputs=[TensorMetadata(**spec.to_dict()) for spec in graph.inputs],
        outputs=[TensorMetadata(**spec.to_dict()) for spec in graph.outputs],
    )


async def _infer(
    request: Request, principal: Principal, name: str, version: str | None
) -> Response:
    services = services_of(request)
    served, graph = await run_in_threadpool(_loaded, services, principal, name, version)
    if request.headers.get("content-encoding", "identity") != "identity":
        raise UnsupportedMediaType(
            "compressed request bodies are not taken; send without request_compression_algorithm"
        )
    header_length = _header_length(request)
    limit = min(MAX_INFER_BYTES, services.settings.max_body_bytes)
    body = await read_body(request, limit, "body is empty; send an inference request (inputs)")

    def run() -> Response:
        parsed = parse_request(body, header_length, graph, services.settings.max_batch)
        answer = encode_answer((served.name, served.version), parsed, graph, graph.run(parsed))
        if answer.json_length is None:
            return Response(answer.body, media_type="application/json")
        return Response(answer.body, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(answer.json_length)})  # fmt: skip

    return await run_in_threadpool(run)


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.isdigit():
        raise BadRequest(f"{HEADER_LENGTH} must be the JSON's length in bytes, not {value[:32]!r}")
    return int(value)


__all__ = ["PREFIX", "error_response", "router", "speaks_v2"]
