"""Public DICOM test files our code did not write (pydicom's own and the pydicom-data
package: MR, CT, US, RG, secondary capture; several vendors and transfer syntaxes),
each sent to the flagship's API as a scanner would: taken, or refused at ingest with a
precise reason. None is a 500, and none is taken only to be dead-lettered later."""

from __future__ import annotations

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
