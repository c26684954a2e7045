"""The worker side of imageops: ``apply_actions``, one uploaded image in, its outputs out.

The input envelope carries the job's plan (``actions``, checked at the API and
checked again here, since a message may come another way), the job, the file's name
and place. Each output is encoded, kept content-addressed under the tenant in the
blob store (``<tenant>/<xx>/<sha256>``; a redelivery writes nothing new) and becomes
one envelope, a fan-out child of the input, whose payload is the blob reference and
whose attributes say what it is: name, tile, size, format, digest, path and when its
retention ends. The worker gives each a deterministic id (input id, stage, tile), so
a redelivered image never doubles an output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

from inferstream.apps.imageops.operations import (
    Image,
    Plan,
    apply_plan,
    decode,
    encode,
    parse_actions,
)
from inferstream.blobs import BlobStore, batch_payloads
from inferstream.envelope import BlobRef, Envelope
from inferstream.errors import ConfigError, InvalidInput
from inferstream.steps import Outcome, Step, StepContext

DEFAULT_RETENTION_HOURS = 24.0
US_PER_HOUR = 3600 * 1_000_000
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def output_name(file_index: int, file_name: str, tile: int, output: str) -> str:
    """An output's name in its job: ``<file index>-<file stem>-<tile>.<format>``; the
    index keeps two files of one name apart, and the stem is cut to safe characters."""
    stem = _UNSAFE.sub("_", PurePosixPath(file_name).stem).strip("_")[:48] or "image"
    return f"{file_index}-{stem}-{tile}.{output}"


class ApplyActions(Step):
    """Applies each image's plan and keeps every output in the blob store."""

    name = "apply_actions"

    def __init__(self, blobs: BlobStore, retention_hours: float) -> None:
        self.blobs = blobs
        self.retention_us = int(retention_hours * US_PER_HOUR)

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        payload = batch_payloads(batch, self.blobs)  # claim checks fetched together
        return [self._one(env, payload) for env in batch]

    def _one(self, env: Envelope, payload: Callable[[Envelope], bytes]) -> Outcome:
        try:
            plan = _plan(env)
            image = decode(payload(env))
            height, width = image.shape[:2]
            plan.output_sizes(width, height)  # checked at the API; again for other senders
        except InvalidInput as exc:
            return exc
        tiles = apply_plan(image, plan)
        return [self._output(env, plan, index, tiles) for index in range(len(tiles))]

    def _output(self, env: Envelope, plan: Plan, index: int, tiles: list[Image]) -> Envelope:
        data = encode(tiles[index], plan.output)
        ref = self.blobs.put(data, env.tenant)
        height, width = tiles[index].shape[:2]
        out = Envelope()
        out.CopyFrom(env)
        out.payload.Clear()
        out.payload.content_type = plan.content_type
        out.payload.blob.CopyFrom(ref)
        attributes = env.attributes
        submitted = env.ingested_at_us or env.created_at_us
        out.attributes.update(
            {
                "output": output_name(
                    int(attributes.get("file_index", "0")), attributes.get("file", ""), index,
                    plan.output,
                ),
                "tile": str(index),
                "tiles": str(len(tiles)),
                "width": str(width),
                "height": str(height),
                "format": plan.output,
                "bytes": str(len(data)),
                "sha256": ref.sha256,
                "blob_path": _blob_path(ref, self.blobs),
                "input_width": attributes.get("width", ""),
                "input_height": attributes.get("height", ""),
                "input_sha256": attributes.get("blob_sha256", ""),
                "actions": plan.to_json(),
                "expires_at_us": str(submitted + self.retention_us),
            }
        )  # fmt: skip
        return out


def _plan(env: Envelope) -> Plan:
    text = env.attributes.get("actions")
    if not text:
        raise InvalidInput(
            f"image {env.id} carries no actions; submit imageops images through "
            "POST /v1/apps/imageops/jobs with an actions field"
        )
    return parse_actions(text)


def _blob_path(ref: BlobRef, blobs: BlobStore) -> str:
    """Where the blob lies under the store's root, which starts with its tenant."""
    return ref.uri.removeprefix(blobs.url).lstrip("/")


def apply_actions_step(
    context: StepContext, retention_hours: float = DEFAULT_RETENTION_HOURS
) -> ApplyActions:
    """Factory of ``apply_actions``: ``retention_hours`` is how long outputs are served
    after their job was submitted (the pipeline file sets it; purges follow it)."""
    if context.blobs is None:
        raise ConfigError(
            f"stage {context.stage!r}: apply_actions keeps its outputs in the blob store; "
            "set blobs: in the pipeline file"
        )
    return ApplyActions(context.blobs, parse_retention(retention_hours, context.stage))


def parse_retention(value: object, stage: str) -> float:
    """``retention_hours`` as a number above 0 (YAML reads ``1e-3`` as text: so may an
    environment variable expand)."""
    try:
        hours = float(value) if not isinstance(value, bool) else float("nan")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        hours = float("nan")
    if not hours > 0:  # NaN fails this too
        raise ConfigError(f"stage {stage!r}: retention_hours {value!r} must be a number above 0")
    return hours
