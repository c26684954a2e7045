"""Public DICOM test files our code did not write (pydicom's own and the pydicom-data
package: MR, CT, US, RG, secondary capture; several vendors and transfer syntaxes),
each sent to the flagship's API as a scanner would: taken, or refused at ingest with a
precise reason. None is a 500, and none is taken only to be dead-lettered later."""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import data_store
import pydicom
import pytest
from api_testing import JWT_SECRET, World, start_world

from inferstream.api import ApiSettings
from inferstream.apps.eggs import APP
from inferstream.apps.eggs.dicom import check_upload
from inferstream.codecs import ImageLimits
from inferstream.errors import InvalidInput
from inferstream.pipeline import load_pipeline

FOLDERS = (
    Path(data_store.__file__).parent / "data",
    Path(pydicom.__file__).parent / "data" / "test_files",
)
FILES = sorted(
    (path for folder in FOLDERS for path in folder.rglob("*") if path.is_file()
     and path.suffix in ("", ".dcm") and path.stat().st_size < 64 * 1024 * 1024),
    key=lambda path: path.name,
)  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("public")
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{folder / 'bus.db'}", store=f"sqlite:///{folder / 'results.db'}",
        blobs=f"file://{folder / 'blobs'}",
    )  # fmt: skip
    yield from start_world(ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6,
                                       burst=10**6))  # fmt: skip


def test_there_are_many_files_of_many_kinds() -> None:
    assert len(FILES) >= 100
    assert sum("MR" in path.name.upper() for path in FILES) >= 10


def test_every_public_file_is_taken_or_refused_at_ingest_with_its_reason(world: World) -> None:
    headers = {**world.headers(world.own, "device"), "Content-Type": "application/dicom"}
    answers: Counter[int] = Counter()
    for path in FILES:
        answer = world.client.post("/v1/scans", content=path.read_bytes(), headers=headers)
        assert answer.status_code in (202, 400, 413, 415), (path.name, answer.text[:300])
        answers[answer.status_code] += 1
        if answer.status_code == 202:
            # Taken at ingest means the pipeline's decoder takes it too: no dead letter.
            check_upload(path.read_bytes(), ImageLimits())
            continue
        detail = answer.json()["detail"]
        assert len(detail) > 25, (path.name, detail)  # a reason, not a bare "bad"
    assert answers[400] > 0


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        # A real MR slice from a real scanner: refused for the contract's tags it lacks,
        # every one named at once.
        (
            "MR_small.dcm",
            "3 problems: (1) missing required tag AccessionNumber (the tray id)"
            " (present but empty)",
        ),
        ("CT_small.dcm", "wrong modality: expected MR, got CT"),
        ("emri_small.dcm", "multi-frame scan"),
    ],
)
def test_public_files_are_refused_for_what_they_lack(world: World, name: str, reason: str) -> None:
    (path,) = [p for p in FILES if p.name == name]
    with pytest.raises(InvalidInput, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_upload(path.read_bytes(), ImageLimits())
    headers = {**world.headers(world.own, "device"), "Content-Type": "application/dicom"}
    answer = world.client.post("/v1/scans", content=path.read_bytes(), headers=headers)
    assert answer.status_code == 400 and reason in answer.json()["detail"]


#: How an installation whose scanners are these public files' would map their tags
#: (docs/dicom.md): each slice its own subject, and what they lack given a value.
PUBLIC_MAPPING = {
    "tags": {
        "egg_id": "SOPInstanceUID",
        "tray": ["AccessionNumber", "StudyID", "=UNKNOWN-TRAY"],
        "scanner": ["StationName", "=UNKNOWN-SCANNER"],
        "acquired_at": [
            "AcquisitionDateTime", "AcquisitionDate+AcquisitionTime", "ContentDate+ContentTime",
            "StudyDate+StudyTime", "=20000101000000",
        ],
        "incubation_day": ["ClinicalTrialTimePointID", "=12"],
    }
}  # fmt: skip


def modality(path: Path) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", ""))
    except Exception:  # not every public file is one pydicom reads
        return ""


@pytest.fixture(scope="module")
def mapped_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("public-mapped")
    spec = dataclasses.replace(load_pipeline(APP.pipeline_path()), settings=PUBLIC_MAPPING)
    spec = spec.with_urls(
        bus=f"sqlite:///{folder / 'bus.db'}", store=f"sqlite:///{folder / 'results.db'}",
        blobs=f"file://{folder / 'blobs'}",
    )  # fmt: skip
    yield from start_world(ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6,
                                       burst=10**6))  # fmt: skip


def test_with_a_tag_mapping_real_mr_files_are_taken(mapped_world: World) -> None:
    """Single-frame MR slices of 32 x 32 or more from three vendors, in eight transfer
    syntaxes, are taken once the installation maps its tags; the rest are refused for
    what no mapping can give (a size below the model's minimum, several frames)."""
    headers = {**mapped_world.headers(mapped_world.own, "device"),
               "Content-Type": "application/dicom"}  # fmt: skip
    taken, refused = set(), {}
    for path in FILES:
        if modality(path) != "MR":
            continue
        answer = mapped_world.client.post("/v1/scans", content=path.read_bytes(), headers=headers)
        if answer.status_code == 202:
            taken.add(path.name)
        else:
            refused[path.name] = answer.json()["detail"]
    expected = {
        "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
        "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
        "MR2_J2KI.dcm", "MR2_J2KR.dcm", "MR2_UNCI.dcm", "MR2_UNCR.dcm",
        "MR-SIEMENS-DICOM-WithOverlays.dcm", "examples_overlay.dcm",
    }  # fmt: skip
    assert expected <= taken, {name: refused.get(name) for name in expected - taken}
    assert refused["emri_small.dcm"].count("multi-frame scan") == 1
    assert "truncated" in refused["MR_truncated.dcm"]
    # Pixel data longer than Rows x Columns says: the header may be wrong, so no guess.
    assert (
        "pixel data is 8320 bytes but Rows x Columns x 2 = 8192" in refused["MR_small_padded.dcm"]
    )
    small = [detail for name, detail in refused.items() if name.isdigit()]
    assert small and all("32" in detail for detail in small), small[:2]
