"""A client of the Open Inference Protocol (KServe's v2 inference protocol), REST and gRPC.

Triton, MLServer, KServe and Seldon Core 2 serve models on this protocol; the
``remote_classify`` step (:mod:`inferstream.remote_classify`) calls one through
:func:`connect`. The URL picks the transport: ``http://`` or ``https://`` for REST,
``grpc://`` (plain) or ``grpcs://`` (TLS) for gRPC. gRPC sends tensors as raw bytes;
REST sends them as JSON numbers, which every server reads.

Errors say what a worker should do with them:

- :class:`~inferstream.errors.RemoteModelUnavailable` (a
  :class:`~inferstream.errors.TransientError`): the server could not be reached, timed
  out, or answered that it is overloaded or restarting (HTTP 429, 502, 503, 504; gRPC
  ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED``, ``ABORTED``). The
  worker retries the batch, without limit, and loses nothing.
- :class:`~inferstream.errors.ModelError`: the server answered and refused (an unknown
  model or version, a tensor it does not take, an error inside the model). Retrying
  cannot help for long: the worker retries with backoff, then dead-letters the message
  with the server's reason.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
from numpy.typing import NDArray

from inferstream.errors import (
    ConfigError,
    MissingExtraError,
    ModelError,
    RemoteModelUnavailable,
)

#: The v2 protocol's names of the tensor types we send and read.
DATATYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
}
#: HTTP statuses that mean "later": overloaded, restarting, or a proxy in front of it.
_HTTP_LATER = frozenset({429, 502, 503, 504})
#: The largest message a gRPC call sends or takes (a batch of 64 512x512 RGB images).
GRPC_MAX_MESSAGE = 256 * 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as a model's metadata declares it; -1 is a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RemoteMetadata:
    """What the server says about a model: ``GET /v2/models/{name}``."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class RemoteResult:
    """One inference call's answer: the model that made it and the output asked for."""

    model_name: str
    model_version: str
    output: NDArray[Any]


class V2Client(ABC):
    """One model on one server."""

    def __init__(self, url: str, model: str, version: str, timeout_s: float) -> None:
        if not model:
            raise ConfigError("a v2 inference client needs the model's name on the server")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be above 0, got {timeout_s}")
        self.url = url
        self.model = model
        self.version = version
        self.timeout_s = timeout_s

    @property
    def where(self) -> str:
        at = f"{self.model} version {self.version}" if self.version else self.model
        return f"model {at} at {self.url}"

    @abstractmethod
    def metadata(self) -> RemoteMetadata:
        """The model's name, versions and tensors."""

    @abstractmethod
    def infer(
        self, inputs: Mapping[str, NDArray[Any]], output: str, request_id: str
    ) -> RemoteResult:
        """Run the model on whole-batch input tensors; return the named output."""

    def close(self) -> None:  # noqa: B027 - a client without connections to release
        """Release connections."""


def datatype_of(array: NDArray[Any]) -> str:
    for name, kind in DATATYPES.items():
        if array.dtype == kind:
            return name
    raise ModelError(f"cannot send a {array.dtype} tensor; send one of {sorted(DATATYPES)}")


def array_of(
    datatype: str, shape: list[int] | tuple[int, ...], data: Any, where: str
) -> NDArray[Any]:
    """A tensor from the v2 protocol's (datatype, shape, data), checked."""
    kind = DATATYPES.get(datatype)
    if kind is None:
        raise ModelError(
            f"{where} answered a {datatype} tensor; inferstream reads {sorted(DATATYPES)}"
        )
    try:
        if isinstance(data, bytes):
            flat = np.frombuffer(data, dtype=np.dtype(kind).newbyteorder("<"))
        else:
            flat = np.asarray(data, dtype=kind)
        return flat.reshape(tuple(int(d) for d in shape)).astype(kind, copy=False)
    except (ValueError, TypeError) as exc:
        raise ModelError(
            f"{where} answered a tensor that is not {datatype} {list(shape)}: {exc}"
        ) from exc


def connect(url: str, model: str, version: str = "", timeout_s: float = 5.0) -> V2Client:
    """A client for ``model`` on the server at ``url`` (scheme picks REST or gRPC)."""
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        return RestClient(url, model, version, timeout_s)
    if scheme in ("grpc", "grpcs"):
        return GrpcClient(url, model, version, timeout_s)
    raise ConfigError(
        f"model server URL {url!r}: use http://HOST:PORT or https://... for the v2 REST "
        "API, grpc://HOST:PORT or grpcs://... for its gRPC API"
    )


class RestClient(V2Client):
    """The v2 REST API over a pool of kept-alive HTTP connections (urllib3)."""

    def __init__(self, url: str, model: str, version: str, timeout_s: float) -> None:
        super().__init__(url, model, version, timeout_s)
        try:
            import urllib3
        except ImportError as exc:  # pragma: no cover - the remote extra brings it
            raise MissingExtraError("urllib3", "remote") from exc
        self._urllib3 = urllib3
        self._http = urllib3.PoolManager(
            maxsize=4, retries=False, timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s)
        )
        path = f"/v2/models/{quote(model, safe='')}"
        if version:
            path += f"/versions/{quote(version, safe='')}"
        self._model_url = url.rstrip("/") + path

    def _call(self, method: str, url: str, body: bytes | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            response = self._http.request(method, url, body=body, headers=headers)
        except self._urllib3.exceptions.HTTPError as exc:
            raise RemoteModelUnavailable(f"{self.where}: {type(exc).__name__}: {exc}") from exc
        text = response.data.decode("utf-8", "replace")
        if response.status in _HTTP_LATER:
            raise RemoteModelUnavailable(f"{self.where} answered {response.status}: {text[:300]}")
        if response.status != 200:
            raise ModelError(f"{self.where} refused ({response.status}): {text[:300]}")
        try:
            answer = json.loads(text)
        except ValueError as exc:
            raise ModelError(
                f"{self.where} answered something that is not JSON: {text[:200]!r}"
            ) from exc
        if not isinstance(answer, dict):
            raise ModelError(f"{self.where} answered {type(answer).__name__}, not a JSON object")
        return answer

    def metadata(self) -> RemoteMetadata:
        answer = self._call("GET", self._model_url)
        try:
            return RemoteMetadata(
                name=str(answer["name"]),
                versions=tuple(str(v) for v in answer.get("versions") or ()),
                platform=str(answer.get("platform") or ""),
                inputs=tuple(_tensor_spec(t) for t in answer.get("inputs") or ()),
                outputs=tuple(_tensor_spec(t) for t in answer.get("outputs") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{self.where}: metadata lacks {exc}: {answer}") from exc

    def infer(
        self, inputs: Mapping[str, NDArray[Any]], output: str, request_id: str
    ) -> RemoteResult:
        request = {
            "id": request_id,
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype_of(array),
                    "data": array.ravel().tolist(),
                }
                for name, array in inputs.items()
            ],
            "outputs": [{"name": output}],
        }
        answer = self._call("POST", self._model_url + "/infer", json.dumps(request).encode())
        for tensor in answer.get("outputs") or ():
            if isinstance(tensor, dict) and tensor.get("name") == output:
                try:
                    array = array_of(
                        tensor["datatype"], tensor["shape"], tensor["data"], self.where
                    )
                except KeyError as exc:
                    raise ModelError(f"{self.where}: output {output!r} lacks {exc}") from exc
                return RemoteResult(
                    str(answer.get("model_name") or self.model),
                    str(answer.get("model_version") or self.version),
                    array,
                )
        raise ModelError(f"{self.where} answered no output {output!r}")

    def close(self) -> None:
        self._http.clear()


def _tensor_spec(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(
        str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"])
    )


class GrpcClient(V2Client):
    """The v2 gRPC API (``inference.GRPCInferenceService``), tensors as raw bytes."""

    #: gRPC codes that mean "later" (the rest mean the server refused).
    LATER = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")

    def __init__(self, url: str, model: str, version: str, timeout_s: float) -> None:
        super().__init__(url, model, version, timeout_s)
        try:
            import grpc
        except ImportError as exc:
            raise MissingExtraError("grpcio", "remote") from exc
        from inferstream._proto import open_inference_pb2 as pb

        self._grpc = grpc
        self._pb = pb
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise ConfigError(f"model server URL {url!r}: write grpc://HOST:PORT")
        target = f"{parts.hostname}:{parts.port}"
        options = [
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
        ]
        if parts.scheme == "grpcs":
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        service = "/inference.GRPCInferenceService/"
        self._metadata = self._channel.unary_unary(
            service + "ModelMetadata",
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        self._infer = self._channel.unary_unary(
            service + "ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

    def _failed(self, exc: Exception) -> Exception:
        code = exc.code() if isinstance(exc, self._grpc.Call) else None
        name = code.name if code is not None else type(exc).__name__
        details = exc.details() if isinstance(exc, self._grpc.Call) else str(exc)
        if name in self.LATER:
            return RemoteModelUnavailable(f"{self.where}: {name}: {details}")
        return ModelError(f"{self.where} refused ({name}): {details}")

    def metadata(self) -> RemoteMetadata:
        request = self._pb.ModelMetadataRequest(name=self.model, version=self.version)
        try:
            answer = self._metadata(request, timeout=self.timeout_s)
        except self._grpc.RpcError as exc:
            raise self._failed(exc) from exc
        return RemoteMetadata(
            name=answer.name,
            versions=tuple(answer.versions),
            platform=answer.platform,
            inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in answer.inputs),
            outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in answer.outputs),
        )

    def infer(
        self, inputs: Mapping[str, NDArray[Any]], output: str, request_id: str
    ) -> RemoteResult:
        pb = self._pb
        request = pb.ModelInferRequest(
            model_name=self.model, model_version=self.version, id=request_id
        )
        for name, array in inputs.items():
            request.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
            little = array.astype(array.dtype.newbyteorder("<"), copy=False)
            request.raw_input_contents.append(np.ascontiguousarray(little).tobytes())
        request.outputs.add(name=output)
        try:
            answer = self._infer(request, timeout=self.timeout_s)
        except self._grpc.RpcError as exc:
            raise self._failed(exc) from exc
        for index, tensor in enumerate(answer.outputs):
            if tensor.name != output:
                continue
            if index < len(answer.raw_output_contents):
                data: Any = answer.raw_output_contents[index]
            else:
                data = _contents(tensor.contents, tensor.datatype)
            array = array_of(tensor.datatype, tuple(tensor.shape), data, self.where)
            return RemoteResult(
                answer.model_name or self.model, answer.model_version or self.version, array
            )
        raise ModelError(f"{self.where} answered no output {output!r}")

    def close(self) -> None:
        self._channel.close()


def _contents(contents: Any, datatype: str) -> list[Any]:
    """The typed-list form of a tensor (servers that send no raw bytes)."""
    field = {
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
        "INT32": "int_contents",
        "INT64": "int64_contents",
    }.get(datatype)
    if field is None:
        return []
    return list(getattr(contents, field))


__all__ = [
    "GrpcClient",
    "RemoteMetadata",
    "RemoteResult",
    "RestClient",
    "TensorSpec",
    "V2Client",
    "connect",
]
