"""File drop: images dropped into a folder are classified, labels arrive later, and the
model is retrained and swapped while the service keeps running.

:data:`APP` declares it to the core. ``shapes`` draws the example's images (a stand-in
for a user's own classes); ``prepare`` turns a dropped image into the model's input;
``learn`` is the learner the pipeline's trainer calls on the labelled records (and
writes the deliberately weak model the application ships); ``demo`` runs the example.

The pipeline (``filedrop.yaml``) is the platform's model lifecycle in one file: the
acting step follows ``shapes@champion``, a shadow follows ``shapes@challenger``; its
``retraining:`` section registers a new challenger whenever enough new labels have
arrived and its ``promotion:`` section promotes it when it is significantly better on
the same subjects. ``inferstream watch FOLDER`` is the folder the files are dropped in.
"""

from __future__ import annotations

from inferstream.application import AppSpec, Attribute, Head, Label

APP = AppSpec(
    name="filedrop",
    title="File drop",
    package=__name__,
    subject="name",
    source="folder",
    attributes=(
        Attribute("name", filterable=True, description="the dropped file's name, no suffix"),
        # A file's own name often names a person or a customer ("smith_j_0412.png"):
        # kept encrypted at rest when encryption is configured.
        Attribute("file", description="the dropped file's name", sensitive=True),
        Attribute("folder", filterable=True, description="the folder it was dropped in"),
        Attribute("blob_sha256", description="the image's SHA-256 in the blob store"),
        Attribute("width", "int", description="image width (pixels)"),
        Attribute("height", "int", description="image height (pixels)"),
    ),
    heads=(
        Head(
            "shape",
            (
                Label("circle", "#0072b2"),
                Label("square", "#e69f00"),
                Label("triangle", "#009e73"),
            ),
        ),
    ),
    content_types=("image/png", "image/jpeg", "image/webp"),
    steps={"prepare": "inferstream.apps.filedrop.prepare:prepare_step"},
    learners={"shapes": "inferstream.apps.filedrop.learn:fit_shapes"},
    pipelines={"filedrop": "filedrop.yaml"},
    example="inferstream.apps.filedrop.example:add_example_command",
    panels=("throughput", "mix", "confidence", "accuracy", "models", "newest"),
)

__all__ = ["APP"]
