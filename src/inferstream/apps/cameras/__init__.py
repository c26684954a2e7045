"""Multi-camera facility state: where the locomotives are on a facility's tracks.

:data:`APP` declares it to the core. ``layout`` says which camera sees which stretch of
which track; ``scene`` moves locomotives and draws what each camera sees; ``simulator``
sends the frames (flaky cameras included); ``aggregate`` checks every camera's frames
against the layout, places them on their track and decodes them once into the models'
input; ``estimate`` is the per-camera estimator (an ONNX model: empty, body, head or
tail in view, and where); ``fusion`` fuses the latest estimate of every camera over a
window into one facility state, degraded when a camera is silent; ``routes`` serves the
newest state (the dashboard's live schematic and table); ``scoring`` checks states against the
simulator's truth and compares the production and dev flows; ``train`` fits the shipped
models; ``demo`` runs it end to end.

Pipelines: ``cameras`` (production: capture -> aggregate -> estimate -> fuse -> store),
``cameras-dev`` (dev estimators on the same images, records kept apart by ``flow``),
``cameras-types`` (a later service on the same images: locomotive type).
"""

from __future__ import annotations

from inferstream.application import AppSpec, Attribute, DashboardView, Head, Label

APP = AppSpec(
    name="cameras",
    title="Facility state",
    package=__name__,
    subject="ref",
    group="facility",
    group_noun="facility",
    source="flow",
    attributes=(
        Attribute(
            "ref",
            filterable=True,
            description="what a record is about: facility@window start, or camera@time",
        ),
        Attribute("facility", filterable=True, description="the facility"),
        Attribute("flow", filterable=True, description="prod, dev, or the service that made it"),
        Attribute("degraded", filterable=True, description="true when a camera was silent"),
        Attribute("window_start_us", "int", filterable=True, description="window start"),
        Attribute("window_end_us", "int", description="window end (event time, µs)"),
        Attribute("cameras_seen", "int", description="cameras with an estimate in the window"),
        Attribute("cameras_expected", "int", description="cameras of the facility"),
        Attribute("missing", description="silent cameras, comma-separated"),
        Attribute("locomotives", "int", description="locomotives on the tracks"),
        Attribute("state", description="the facility state as JSON (tracks, heads, tails)"),
        Attribute("camera", filterable=True, description="the camera (sightings)"),
        Attribute("track", "int", description="the camera's track (sightings)"),
        Attribute("loco_type", filterable=True, description="the locomotive type (sightings)"),
    ),
    heads=(
        # What a record is: a facility state (complete, or degraded by a silent camera)
        # or a type service's sighting. Every record answers it.
        Head(
            "record",
            (
                Label("complete", "#009e73", "State complete"),
                Label("degraded", "#d55e00", "State degraded"),
                Label("sighting", "#56b4e9", "Type sighting"),
            ),
        ),
        Head(
            "view",
            (
                Label("empty", "#999999"),
                Label("body", "#56b4e9"),
                Label("head", "#e69f00"),
                Label("tail", "#0072b2"),
            ),
        ),
        Head(
            "type",
            (
                Label("none", "#999999"),
                Label("shunter", "#cc79a7"),
                Label("mainline", "#0072b2"),
                Label("freight", "#e69f00"),
            ),
        ),
    ),
    content_types=("application/x-npy",),
    steps={
        "estimate": "inferstream.apps.cameras.estimate:estimate_step",
        "aggregate": "inferstream.apps.cameras.aggregate:aggregate_step",
        "fuse": "inferstream.apps.cameras.fusion:fuse_step",
        "sighting": "inferstream.apps.cameras.estimate:sighting_step",
    },
    pipelines={
        "cameras": "cameras.yaml",
        "cameras-dev": "cameras-dev.yaml",
        "cameras-types": "cameras-types.yaml",
    },
    example="inferstream.apps.cameras.example:add_example_command",
    routes="inferstream.apps.cameras.routes:make_routes",
    views=(
        DashboardView("Facility now", "lanes", "/state/tracks", refresh_s=2.0),
        DashboardView("Facility state now", "table", "/state", refresh_s=2.0),
    ),
    panels=("throughput", "mix", "stages", "newest"),
)

__all__ = ["APP"]
