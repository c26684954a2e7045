"""The v2 inference protocol's tensors: datatypes, a graph's signature, requests decoded
and answers encoded. No HTTP here; :mod:`inferstream.api.v2` is the adapter.

A request is JSON (``inputs: [{name, shape, datatype, data}]``, optional ``outputs``,
``id``, ``parameters``) or, with Triton's binary tensor data extension, that JSON
followed by the tensors' bytes (``Inference-Header-Content-Length`` says where the JSON
ends; an input's ``parameters.binary_data_size`` how many bytes are its). Every input is
checked against the graph before anything runs: its name, its datatype, its shape (fixed
dimensions equal, a dynamic batch dimension at most ``max_batch``) and its data (as many
values as the shape holds, of the datatype's kind, in its range).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, Field, StrictInt, ValidationError

from inferstream.api.errors import BadRequest, PayloadTooLarge
from inferstream.errors import ModelError

#: ONNX Runtime's tensor types -> the protocol's datatypes.
DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}
#: The datatypes a request may carry: numbers and booleans (BYTES and BF16 are listed in
#: metadata but not taken: no model the registry serves has them, so none is tested).
NUMPY: dict[str, np.dtype[Any]] = {
    name: np.dtype(kind)
    for name, kind in {
        "BOOL": "bool", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
        "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
        "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
    }.items()
}  # fmt: skip
#: The kinds of JSON values each numpy kind takes: booleans for BOOL, integers for the
#: integer types, any number for the floating point ones.
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "fiu"}


@dataclass(frozen=True)
class TensorSpec:
    """A graph's input or output: name, datatype, shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(node: Any) -> TensorSpec:
    datatype = DATATYPES.get(node.type)
    if datatype is None:
        raise ModelError(
            f"tensor {node.name!r} is {node.type}, which the v2 protocol cannot carry; "
            "serve a graph whose inputs and outputs are tensors"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
    return TensorSpec(node.name, datatype, shape)


class Graph:
    """A loaded ONNX graph and its signature, run tensor in, tensor out."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = tuple(_spec(node) for node in session.get_inputs())
        self.outputs = tuple(_spec(node) for node in session.get_outputs())

    def run(self, request: InferRequest) -> list[NDArray[Any]]:
        """The requested outputs, in the order requested."""
        names = [output.name for output in request.outputs]
        try:
            return list(self.session.run(names, request.feeds))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BadRequest(
                f"ONNX Runtime could not run the model on these inputs: {exc}"
            ) from exc


class _Input(BaseModel):
    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class _Output(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class _Request(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[_Input] = Field(min_length=1)
    outputs: list[_Output] | None = None


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A request checked against its graph: the arrays to feed, the outputs wanted."""

    id: str | None
    feeds: dict[str, NDArray[Any]]
    outputs: tuple[RequestedOutput, ...]


def parse_request(
    body: bytes, header_length: int | None, graph: Graph, max_batch: int
) -> InferRequest:
    """``body`` checked against ``graph``; :class:`BadRequest` naming what is wrong, or
    :class:`PayloadTooLarge` for a batch over ``max_batch``."""
    header, binary = _split(body, header_length)
    try:
        parsed = _Request.model_validate_json(header)
    except ValidationError as exc:
        raise BadRequest(f"inference request is not valid: {_reason(exc)}") from exc
    inputs = {item.name: item for item in parsed.inputs}
    known = [spec.name for spec in graph.inputs]
    strangers = sorted(set(inputs) - set(known))
    if strangers or len(inputs) != len(parsed.inputs):
        raise BadRequest(
            f"inputs {strangers or 'named twice'} are not the model's; its inputs: "
            f"{', '.join(known)}, each once"
        )
    feeds, offset = {}, 0
    for spec in graph.inputs:
        if spec.name not in inputs:
            raise BadRequest(f"input {spec.name!r} is missing; the model takes {', '.join(known)}")
        feeds[spec.name], offset = _array(inputs[spec.name], spec, binary, offset, max_batch)
    if offset != len(binary):
        raise BadRequest(
            f"{len(binary)} bytes follow the JSON, the inputs' binary_data_size add up to "
            f"{offset}; they must be equal"
        )
    return InferRequest(parsed.id, feeds, _outputs(parsed, graph))


def _split(body: bytes, header_length: int | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not 0 < header_length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length is {header_length}, the body {len(body)} "
            "bytes; it must be the length of the JSON that starts the body"
        )
    return body[:header_length], body[header_length:]


def _reason(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
        for error in exc.errors()[:5]
    )


def _array(
    given: _Input, spec: TensorSpec, binary: bytes, offset: int, max_batch: int
) -> tuple[NDArray[Any], int]:
    """The input's array, and the offset where the next input's bytes start."""
    _check_form(given, spec, max_batch)
    dtype = NUMPY[spec.datatype]
    count = math.prod(given.shape)
    size = given.parameters.get("binary_data_size")
    if size is None:
        return _from_json(given, dtype, count), offset
    expected = count * dtype.itemsize
    if not isinstance(size, int) or isinstance(size, bool) or size != expected:
        raise BadRequest(
            f"input {given.name!r} has binary_data_size {size!r}; shape {given.shape} of "
            f"{spec.datatype} is {expected} bytes"
        )
    if offset + size > len(binary):
        raise BadRequest(f"input {given.name!r}: the body ends before its {size} bytes")
    array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
    return array.reshape(given.shape), offset + size


def _check_form(given: _Input, spec: TensorSpec, max_batch: int) -> None:
    """Datatype and shape against the graph's; the batch against ``max_batch``."""
    if given.datatype != spec.datatype:
        raise BadRequest(
            f"input {given.name!r} is {spec.datatype}, the request says {given.datatype!r}"
        )
    if spec.datatype not in NUMPY:
        raise BadRequest(f"input {given.name!r}: {spec.datatype} tensors are not taken here")
    fits = len(given.shape) == len(spec.shape) and all(
        dim >= 1 and want in (-1, dim) for dim, want in zip(given.shape, spec.shape, strict=False)
    )
    if not fits:
        raise BadRequest(
            f"input {given.name!r} has shape {list(spec.shape)} (-1: any size from 1), the "
            f"request says {given.shape}"
        )
    if spec.shape and spec.shape[0] == -1 and given.shape[0] > max_batch:
        raise PayloadTooLarge(
            f"input {given.name!r} holds a batch of {given.shape[0]}; at most {max_batch} "
            "per request, send the rest in another"
        )


def _from_json(given: _Input, dtype: np.dtype[Any], count: int) -> NDArray[Any]:
    """``data`` (flat or nested, row-major) as an array of ``dtype``, its values checked."""
    what = f"data of input {given.name!r}"
    if not isinstance(given.data, list):
        raise BadRequest(f"{what} is missing: give a list of values (or binary_data_size)")
    try:
        values = np.asarray(given.data).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"{what} is not a list of numbers of one shape: {exc}") from exc
    if values.size != count:
        raise BadRequest(f"{what} holds {values.size} values; shape {given.shape} holds {count}")
    if values.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise BadRequest(f"{what} holds {_kind_name(values)}; {given.datatype} takes "
                         f"{_kind_name(np.empty(0, dtype))}")  # fmt: skip
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        if values.min() < limits.min or values.max() > limits.max:
            raise BadRequest(f"{what} holds values outside {given.datatype}'s range "
                             f"({limits.min} to {limits.max})")  # fmt: skip
    return values.astype(dtype).reshape(given.shape)


def _kind_name(values: NDArray[Any]) -> str:
    kind = values.dtype.kind
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}.get(
        kind, "values that are not numbers" if kind in "USO" else str(values.dtype)
    )


def _outputs(parsed: _Request, graph: Graph) -> tuple[RequestedOutput, ...]:
    """The outputs asked for (all by default), each as JSON or binary."""
    binary_default = parsed.parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest("parameters.binary_data_output must be true or false")
    if parsed.outputs is None:
        return tuple(RequestedOutput(spec.name, binary_default) for spec in graph.outputs)
    known = [spec.name for spec in graph.outputs]
    wanted = []
    for output in parsed.outputs:
        if output.name not in known:
            raise BadRequest(
                f"output {output.name[:128]!r} is not the model's; its outputs: {', '.join(known)}"
            )
        binary = output.parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"output {output.name!r}: parameters.binary_data must be a boolean")
        wanted.append(RequestedOutput(output.name, binary))
    return tuple(wanted)


@dataclass(frozen=True)
class Answer:
    """An encoded inference answer; ``json_length`` is set when tensor bytes follow."""

    body: bytes
    json_length: int | None


def encode_answer(
    model: tuple[str, str], request: InferRequest, graph: Graph, arrays: Sequence[NDArray[Any]]
) -> Answer:
    """The answer to ``request`` from the ``arrays`` the graph gave for its outputs:
    ``{model_name, model_version, id, outputs}``, binary outputs after the JSON."""
    datatypes = {spec.name: spec.datatype for spec in graph.outputs}
    outputs, chunks = [], []
    for wanted, array in zip(request.outputs, arrays, strict=True):
        output: dict[str, Any] = {"name": wanted.name, "datatype": datatypes[wanted.name],
                                  "shape": list(array.shape)}  # fmt: skip
        if wanted.binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            output["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            output["data"] = array.reshape(-1).tolist()
        outputs.append(output)
    answer: dict[str, Any] = {"model_name": model[0], "model_version": model[1]}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps({**answer, "outputs": outputs}, separators=(",", ":")).encode()
    if not chunks:
        return Answer(header, None)
    return Answer(header + b"".join(chunks), len(header))


__all__ = [
    "DATATYPES",
    "NUMPY",
    "Answer",
    "Graph",
    "InferRequest",
    "RequestedOutput",
    "TensorSpec",
    "encode_answer",
    "parse_request",
]
