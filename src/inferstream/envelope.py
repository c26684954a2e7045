"""The envelope: the protobuf message that travels on every topic.

The schema lives in ``proto/inferstream/v1/envelope.proto``; this module adds the
few helpers every stage needs: making a new envelope at ingest, deriving an output
envelope with a deterministic id, parsing bytes with a clear error, and moving
NumPy arrays in and out of tensor payloads.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping

import numpy as np
from google.protobuf.message import DecodeError

from inferstream._proto.envelope_pb2 import (
    BlobRef,
    DeadLetter,
    Envelope,
    EnvelopeBatch,
    FanOut,
    LineageStep,
    ModelRole,
    Payload,
    Prediction,
    Tensor,
)
from inferstream.errors import InvalidInput

SCHEMA_VERSION = 1


def now_us() -> int:
    """Wall-clock time in microseconds since the Unix epoch (for timestamps, not durations)."""
    return time.time_ns() // 1000


def new_id() -> str:
    return uuid.uuid4().hex


def derive_id(input_id: str, stage: str, index: int) -> str:
    """Deterministic id of output ``index`` that ``stage`` made from ``input_id``.

    A redelivered input yields the same ids, so sinks that upsert by id never
    double a result.
    """
    digest = hashlib.blake2b(f"{input_id}\x1f{stage}\x1f{index}".encode(), digest_size=16)
    return digest.hexdigest()


def new_envelope(
    data: bytes,
    content_type: str,
    *,
    tenant: str = "default",
    key: str = "",
    source: str = "",
    attributes: Mapping[str, str] | None = None,
    envelope_id: str | None = None,
    created_at_us: int | None = None,
) -> Envelope:
    """An ingest envelope with inline payload bytes."""
    ident = envelope_id or new_id()
    stamp = now_us()
    env = Envelope(
        schema_version=SCHEMA_VERSION,
        id=ident,
        root_id=ident,
        tenant=tenant,
        partition_key=key or ident,
        source=source,
        created_at_us=created_at_us if created_at_us is not None else stamp,
        ingested_at_us=stamp,
        trace_id=new_id(),
        payload=Payload(content_type=content_type, inline=data),
    )
    if attributes:
        env.attributes.update(attributes)
    return env


def derive(parent: Envelope, stage: str, index: int = 0, worker: str = "") -> Envelope:
    """A copy of ``parent`` as output ``index`` of ``stage``: new id, lineage appended."""
    child = Envelope()
    child.CopyFrom(parent)
    child.id = derive_id(parent.id, stage, index)
    child.parent_id = parent.id
    child.lineage.append(LineageStep(stage=stage, at_us=now_us(), worker=worker))
    return child


def parse(data: bytes) -> Envelope:
    """Parse envelope bytes; raise :class:`InvalidInput` with the reason when unusable."""
    env = Envelope()
    try:
        env.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidInput(f"not an inferstream envelope: {exc}") from exc
    if env.schema_version > SCHEMA_VERSION:
        raise InvalidInput(
            f"envelope schema_version {env.schema_version} is newer than this worker's "
            f"({SCHEMA_VERSION}); upgrade inferstream on this stage"
        )
    if not env.id:
        raise InvalidInput("envelope has no id")
    return env


def to_tensor(array: np.ndarray) -> Tensor:
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    return Tensor(
        dtype=contiguous.dtype.name, shape=list(contiguous.shape), data=contiguous.tobytes()
    )


def from_tensor(tensor: Tensor) -> np.ndarray:
    try:
        dtype = np.dtype(tensor.dtype)
        return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"tensor payload does not match its dtype {tensor.dtype!r} and shape "
            f"{list(tensor.shape)}: {exc}"
        ) from exc


__all__ = [
    "SCHEMA_VERSION",
    "BlobRef",
    "DeadLetter",
    "Envelope",
    "EnvelopeBatch",
    "FanOut",
    "LineageStep",
    "ModelRole",
    "Payload",
    "Prediction",
    "Tensor",
    "derive",
    "derive_id",
    "from_tensor",
    "new_envelope",
    "new_id",
    "now_us",
    "parse",
    "to_tensor",
]
