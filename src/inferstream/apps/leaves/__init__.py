"""Drone leaf-disease grading: detect leaves in a photo, crop them, grade five diseases.

:data:`APP` declares it to the core. ``simulator`` makes a field trial's photos with
their truth, ``detect`` finds the leaves and fans each photo out into crops, ``grade``
is the grader step (one stage per disease), ``leaves.yaml`` wires them and joins the
five grades of a leaf, ``analysis`` reads the records back (mean grade per day, area
and disease, the treatment's trend, a version diff), ``train`` fits the shipped models,
``example`` runs it all (``inferstream example leaves``).
"""

from __future__ import annotations

from inferstream.application import AppSpec, Attribute, DashboardView, Head, Label

#: Grade colours, from healthy to severe.
_GRADE_COLOURS = ("#009e73", "#56b4e9", "#f0e442", "#e69f00", "#d55e00")

APP = AppSpec(
    name="leaves",
    title="Leaf-disease grading",
    package=__name__,
    subject="leaf_id",
    group="date",
    group_noun="day",
    source="position_id",
    attributes=(
        Attribute("leaf_id", filterable=True, description="position/date/crop index"),
        Attribute("position_id", filterable=True, client=True, description="GPS position"),
        Attribute("area", filterable=True, client=True, description="control or treated"),
        Attribute("date", filterable=True, client=True, description="day of the photo"),
        Attribute("leaf_crop_idx", "int", description="the crop's index in its photo"),
        Attribute("disease_type", filterable=True, description="graded disease, or 'all'"),
        Attribute("predicted_grade", "int", description="severity 0-4"),
        Attribute("record_kind", filterable=True, description="grade or leaf (joined)"),
        Attribute("cropper_model_id"),
        Attribute("cropper_model_version"),
        Attribute("disease_model_id", filterable=True),
        Attribute("disease_model_version", filterable=True),
        Attribute("crop_path", description="the crop in the blob store"),
        Attribute("box", description="x0,y0,x1,y1 of the crop in its photo"),
        Attribute("image_path", description="the photo in the blob store"),
        *(Attribute(f"grade_{d}", "int") for d in ("rust", "mildew", "spot", "blight", "scab")),
    ),
    heads=(
        Head(
            "grade",
            tuple(Label(str(g), c, f"Grade {g}") for g, c in enumerate(_GRADE_COLOURS)),
        ),
    ),
    content_types=("image/png",),
    steps={
        "detect_leaves": "inferstream.apps.leaves.detect:detect_step",
        "grade_leaf": "inferstream.apps.leaves.grade:grade_step",
        "leaf_summary": "inferstream.apps.leaves.grade:leaf_summary_step",
    },
    pipelines={"leaves": "leaves.yaml"},
    example="inferstream.apps.leaves.example:add_example_command",
    routes="inferstream.apps.leaves.routes:make_routes",
    views=(DashboardView("Mean grade per day, by disease and area", "lines", "/trend"),),
    panels=("throughput", "mix", "confidence", "stages", "newest"),
)

__all__ = ["APP"]
