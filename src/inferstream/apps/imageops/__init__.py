"""imageops: user-ordered resize, split and blur of uploaded images, as a service.

Clients ``POST /v1/apps/imageops/jobs`` with images and an ``actions`` document
(:mod:`.operations` says exactly what each operation does); everything is checked
before anything is queued. Workers apply the plan (``apply_actions``, :mod:`.steps`),
keep every output content-addressed under the tenant in the blob store and store one
record per output; :mod:`.routes` answers a job's status and serves each output until
its retention passes (:mod:`.retention` purges what expired). No model: its records
carry no prediction.

:data:`APP` declares it to the core; keep this module light (no OpenCV here).
"""

from __future__ import annotations

from inferstream.application import AppSpec, Attribute

APP = AppSpec(
    name="imageops",
    title="Image operations",
    package=__name__,
    subject="file",
    group="job",
    group_noun="job",
    attributes=(
        Attribute("file", filterable=True, description="the file's name as the client sent it"),
        Attribute("job", filterable=True, description="the job the file came in"),
        Attribute("file_index", "int", description="the file's place in its job, from 0"),
        Attribute("output", filterable=True, description="the output's name in its job"),
        Attribute("tile", "int", description="the output's place among its file's, from 0"),
        Attribute("tiles", "int", description="how many outputs its file makes"),
        Attribute("width", "int", description="the output's width in pixels"),
        Attribute("height", "int", description="the output's height in pixels"),
        Attribute("format", filterable=True, description="jpg, png or webp"),
        Attribute("bytes", "int", description="the output's size in bytes"),
        Attribute("sha256", description="the output's SHA-256 (its blob)"),
        Attribute("blob_path", description="where the output lies: <tenant>/<xx>/<sha256>"),
        Attribute("input_width", "int", description="the uploaded image's width"),
        Attribute("input_height", "int", description="the uploaded image's height"),
        Attribute("input_sha256", description="the uploaded image's SHA-256 (its blob)"),
        Attribute("actions", description="the job's operations, in their full form"),
        Attribute("expires_at_us", "int", description="when the output's retention ends"),
    ),
    content_types=("image/png", "image/jpeg", "image/webp"),
    steps={"apply_actions": "inferstream.apps.imageops.steps:apply_actions_step"},
    pipelines={"imageops": "imageops.yaml"},
    example="inferstream.apps.imageops.example:add_example_command",
    panels=("throughput", "stages", "newest"),
    routes="inferstream.apps.imageops.routes:make_routes",
    housekeeping="inferstream.apps.imageops.retention:purge_expired",
)

__all__ = ["APP"]
