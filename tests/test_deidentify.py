"""De-identification at the edge (PS3.15 basic profile, seeded): what identifies a person
is gone, the same seed gives the same pseudonyms, pixels are untouched, and the
application's checks pass on what is forwarded."""

from __future__ import annotations

import argparse
import io
import warnings
from pathlib import Path

import pydicom
import pytest
from dicom_builder import make_dataset, to_bytes

from inferstream.admit import Admitter
from inferstream.apps.eggs import APP
from inferstream.bus import open_bus
from inferstream.cli import _deidentifier
from inferstream.deidentify import Deidentifier
from inferstream.errors import ConfigError, InvalidInput

SEED = "site-secret-0123456789"


def read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def scan(seed: int = 3) -> bytes:
    dataset = make_dataset(64, 64, seed, PatientBirthDate="19700101",
                           InstitutionName="Hatchery Ltd")  # fmt: skip
    block = dataset.private_block(0x0011, "ACME scanner", create=True)
    block.add_new(0x01, "LO", "operator Jane Doe")
    return to_bytes(dataset)


def test_identifying_elements_are_replaced_and_pixels_kept() -> None:
    original = scan()
    before, after = read(original), read(Deidentifier(SEED)(original))
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StationName",
                    "PatientBirthDate", "InstitutionName", "SOPInstanceUID",
                    "StudyInstanceUID", "AcquisitionDateTime"):  # fmt: skip
        assert str(after.get(keyword)) != str(before.get(keyword)), keyword
    assert after.PatientIdentityRemoved == "YES" and "PS3.15" in after.DeidentificationMethod
    assert any(e.tag.is_private for e in before) and not any(e.tag.is_private for e in after)
    assert after.PixelData == before.PixelData and after.Rows == before.Rows
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID


def test_the_same_seed_gives_the_same_pseudonyms_and_another_seed_others() -> None:
    one, again = Deidentifier(SEED)(scan()), Deidentifier(SEED)(scan())
    assert one == again  # a file sent twice is the same file twice
    other = read(Deidentifier(SEED + "-other")(scan()))
    assert other.PatientID != read(one).PatientID
    # One patient (egg) in two files: one pseudonym.
    same_egg = to_bytes(make_dataset(64, 64, 3, SOPInstanceUID="1.2.3.4.5"))
    assert read(Deidentifier(SEED)(same_egg)).PatientID == read(one).PatientID


def test_kept_elements_stay_and_wrong_settings_are_refused() -> None:
    kept = read(Deidentifier(SEED, keep=["StationName"])(scan()))
    assert kept.StationName == "SCANNER-03"
    with pytest.raises(ConfigError, match="at least 16 characters"):
        Deidentifier("short")
    with pytest.raises(ConfigError, match="NoSuchTag: not DICOM keywords"):
        Deidentifier(SEED, keep=["NoSuchTag"])
    with pytest.raises(InvalidInput, match="could not be de-identified"):
        Deidentifier(SEED)(b"\0" * 128 + b"DICM" + b"\xff" * 40)


def test_the_edge_checks_and_buffers_what_it_forwards(tmp_path: Path) -> None:
    """The admitter of an edge agent with ``--deidentify``: the scan is checked as the
    centre checks it, and what is buffered carries only pseudonyms."""
    bus = open_bus(f"sqlite:///{tmp_path / 'edge.db'}")
    try:
        admitter = Admitter(bus, None, topic="out", tenant="t", app=APP,
                            deidentify=Deidentifier(SEED))  # fmt: skip
        checked = admitter.check(scan())
        assert checked.attributes["egg_id"] != "EGG-000003"
        assert read(checked.data).PatientID == checked.attributes["egg_id"]
        assert "EGG-000003" not in checked.data.decode("latin-1")
    finally:
        bus.close()


def test_the_edge_command_needs_the_sites_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    args = argparse.Namespace(deidentify=True, deid_seed_file=None, deid_keep=[])
    monkeypatch.delenv("INFERSTREAM_DEID_SEED", raising=False)
    with pytest.raises(ConfigError, match="INFERSTREAM_DEID_SEED or --deid-seed-file"):
        _deidentifier(args)
    monkeypatch.setenv("INFERSTREAM_DEID_SEED", SEED)
    assert isinstance(_deidentifier(args), Deidentifier)
    assert _deidentifier(argparse.Namespace(deidentify=False)) is None
