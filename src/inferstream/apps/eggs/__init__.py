"""In-ovo sexing of chicken embryos from MRI scans: the flagship application.

:data:`APP` declares it to the core. ``phantom`` generates synthetic day-12 egg MRI
slices, ``dicomgen`` writes them as DICOM, ``dicom`` decodes and checks the scan
contract, ``preprocess`` turns scans into model input, ``train`` fits the shipped
``egg_sexing`` model, ``simulator`` and ``demo`` run it end to end. Labels, in model
output order, are :data:`LABELS`.
"""

from __future__ import annotations

from inferstream.application import AppSpec, Attribute, Head, Label, Ratio

#: Class labels in model output order (the flagship contract).
LABELS: tuple[str, ...] = ("female", "male", "not_developing")

APP = AppSpec(
    name="eggs",
    title="In-ovo sexing",
    package=__name__,
    subject="egg_id",
    group="tray",
    group_noun="tray",
    source="scanner",
    attributes=(
        Attribute("egg_id", filterable=True, description="the egg a scan is of"),
        Attribute("tray", filterable=True, client=True, description="its incubator tray"),
        Attribute("scanner", filterable=True, client=True, description="the MRI scanner"),
        Attribute("acquired_at", description="when the scan was acquired (DICOM time)"),
        Attribute("incubation_day", "int", description="day of incubation at the scan"),
        Attribute("modality", description="DICOM modality (MR)"),
        Attribute(
            "domain",
            filterable=True,
            description="egg, or not_an_egg: outside the model's domain, so not sexed",
        ),
        Attribute("domain_score", "float", description="how unlike the eggs learnt (egg_guard)"),
    ),
    heads=(
        Head(
            "sex",
            (
                Label("female", "#e69f00"),
                Label("male", "#0072b2"),
                Label("not_developing", "#009e73", "Not developing"),
            ),
        ),
    ),
    ratios=(Ratio("female_ratio", "sex", "female"),),
    content_types=("application/dicom",),
    checks={"application/dicom": "inferstream.apps.eggs.dicom:check_upload"},
    configure="inferstream.apps.eggs.tags:parse_settings",
    steps={
        "decode_dicom": "inferstream.apps.eggs.dicom:decode_dicom_step",
        "preprocess_scan": "inferstream.apps.eggs.preprocess:preprocess_step",
        "egg_guard": "inferstream.apps.eggs.domain:egg_guard_step",
    },
    pipelines={"eggs": "eggs.yaml"},
    example="inferstream.apps.eggs.example:add_example_command",
    panels=("throughput", "mix", "confidence", "accuracy", "models", "stages", "newest"),
)

__all__ = ["APP", "LABELS"]
