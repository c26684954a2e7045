"""An installation's mapping of its scanners' tags to the scan contract (``settings: tags:``
in the pipeline file): read and refused with reasons, applied alike by both DICOM readers,
at ingest and in the pipeline's decode step."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dicom_builder import make_dataset, to_bytes
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.dicom import (
    DecodedScan,
    InvalidScan,
    decode,
    decode_dicom_step,
    decode_with_pydicom,
)
from inferstream.apps.eggs.tags import EggSettings, parse_settings
from inferstream.codecs import ImageLimits
from inferstream.envelope import new_envelope
from inferstream.errors import ConfigError
from inferstream.pipeline import load_pipeline
from inferstream.steps import StepContext

#: A scanner that writes the egg id in StudyID, the tray in SeriesDescription, the time
#: as a date and a time of the image content, and no incubation day at all.
OTHER_SCANNER = {
    "PatientID": None,
    "AccessionNumber": None,
    "AcquisitionDateTime": None,
    "ClinicalTrialTimePointID": None,
    "StudyID": "EGG-77",
    "SeriesDescription": "TRAY-9",
    "ContentDate": "20261130",
    "ContentTime": "101500.25",
}
MAPPING = {
    "tags": {
        "egg_id": ["PatientID", "StudyID"],
        "tray": "SeriesDescription",
        "acquired_at": ["AcquisitionDateTime", "ContentDate+ContentTime"],
        "incubation_day": ["ClinicalTrialTimePointID", "=12"],
    }
}
Decoder = Callable[..., DecodedScan]


def other_scanner(syntax: str = ExplicitVRLittleEndian, **more: Any) -> bytes:
    """That scanner's file; ``more`` sets tags, or leaves one of its own out (None)."""
    fields = {**OTHER_SCANNER, **more}
    kept = {k: v for k, v in fields.items() if v is not None or OTHER_SCANNER.get(k, "") is None}
    return to_bytes(make_dataset(64, 64, 3, **kept), syntax)


@pytest.mark.parametrize("decoder", [decode, decode_with_pydicom])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
def test_both_readers_take_a_mapped_scanner_alike(decoder: Decoder, syntax: str) -> None:
    tags = parse_settings(MAPPING).tags
    scan = decoder(other_scanner(syntax), tags=tags)
    assert scan.attributes() == {
        "egg_id": "EGG-77",
        "tray": "TRAY-9",
        "scanner": "SCANNER-03",
        "acquired_at": "2026-11-30T10:15:00.250000+00:00",
        "incubation_day": "12",
        "modality": "MR",
    }
    # Without the mapping the same file lacks four of the contract's tags, all named.
    with pytest.raises(InvalidScan, match=r"4 problems: .*PatientID.*AccessionNumber"):
        decoder(other_scanner(syntax))


def test_a_source_present_wins_over_the_next_and_a_value_is_the_last_resort() -> None:
    tags = parse_settings(MAPPING).tags
    scan = decode(other_scanner(PatientID="EGG-1", ClinicalTrialTimePointID="7"), tags=tags)
    assert (scan.egg_id, scan.incubation_day) == ("EGG-1", 7)


def test_what_a_mapped_scan_lacks_is_named_by_its_mapped_tags() -> None:
    tags = parse_settings(MAPPING).tags
    data = other_scanner(StudyID=None, ContentTime=None)
    with pytest.raises(InvalidScan) as refused:
        decode(data, tags=tags)
    message = str(refused.value)
    assert "missing required tag PatientID or StudyID (mapped to PatientID) (the egg id)" in message
    assert "AcquisitionDateTime (0008,002A) or ContentDate+ContentTime (mapped to" in message


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"tagz": {}}, "unknown tagz; the settings are: tags"),
        ({"tags": {"egg": "StudyID"}}, "no field egg; the fields are egg_id, tray"),
        ({"tags": {"egg_id": "StudyIdentifier"}}, "'StudyIdentifier' is not a DICOM keyword"),
        ({"tags": {"tray": "StudyDate+StudyTime"}}, "only acquired_at reads two tags"),
        ({"tags": {"tray": "="}}, "empty fixed value"),
        ({"tags": {"tray": []}}, "a DICOM keyword, a list of them"),
        ({"tags": ["egg_id"]}, "tags maps fields to DICOM keywords"),
    ],
)
def test_wrong_settings_are_refused_with_what_to_write(settings: Any, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason.replace("(", r"\(")):
        parse_settings(settings)


def pipeline_with(tmp_path: Path, settings: Any) -> Path:
    text = APP.pipeline_path().read_text()
    path = tmp_path / "eggs.yaml"
    path.write_text(text + "\nsettings: " + repr(settings).replace("'", '"') + "\n")
    return path


def test_the_pipeline_file_configures_ingest_and_the_decode_step(tmp_path: Path) -> None:
    spec = load_pipeline(pipeline_with(tmp_path, MAPPING))
    app = spec.application()
    assert app is not None and isinstance(app.parsed_settings, EggSettings)
    data = other_scanner()
    checked = app.check_upload(data, ImageLimits())
    assert (checked.key, checked.attributes["tray"]) == ("EGG-77", "TRAY-9")
    with pytest.raises(InvalidScan, match="missing required tag PatientID"):
        APP.check_upload(data, ImageLimits())  # the application as shipped: no mapping
    step = decode_dicom_step(StepContext(pipeline=spec.name, stage="decode", app=app))
    (out,) = step.process([new_envelope(data, "application/dicom", tenant="t")])
    assert not isinstance(out, Exception), out
    assert out.attributes["egg_id"] == "EGG-77" and out.partition_key == "EGG-77"


def test_a_pipeline_file_with_wrong_settings_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'StudyIdentifier' is not a DICOM keyword"):
        load_pipeline(pipeline_with(tmp_path, {"tags": {"egg_id": "StudyIdentifier"}}))
    spec = load_pipeline(APP.pipeline_path())
    with pytest.raises(ConfigError, match="beside an 'app:'"):
        from inferstream.pipeline.parse import parse_pipeline

        raw = {"name": "x", "stages": [{"name": "s", "input": "a", "steps": []}]}
        parse_pipeline({**raw, "settings": {"tags": {}}}, tmp_path / "x.yaml")
    assert dataclasses.replace(spec, settings={}).application() is not None


def test_the_edge_agent_reads_the_same_settings_as_the_centre(tmp_path: Path) -> None:
    """``inferstream edge --settings``: a YAML file of them, or the centre's pipeline file."""
    from inferstream.cli import app_with_settings

    own = tmp_path / "tags.yaml"
    own.write_text("tags: {egg_id: [PatientID, StudyID], tray: SeriesDescription}\n")
    for path in (own, pipeline_with(tmp_path, MAPPING)):
        app = app_with_settings(APP, str(path))
        assert app.check_upload(other_scanner(**{"ClinicalTrialTimePointID": "9",
            "AcquisitionDateTime": "20261130101500"}), ImageLimits()).key == "EGG-77"  # fmt: skip
    own.write_text("tags: {egg_id: NoSuchKeyword}\n")
    with pytest.raises(ConfigError, match="'NoSuchKeyword' is not a DICOM keyword"):
        app_with_settings(APP, str(own))
