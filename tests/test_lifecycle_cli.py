"""``inferstream erase``: refused without the subject confirmed, then erases and says what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferstream.api.accounts import Accounts, ScanRecord
from inferstream.apps.eggs import APP
from inferstream.blobs import LocalBlobStore
from inferstream.cli import main
from inferstream.store import ResultRow, ResultsStore
from inferstream.store.audit import AuditLog


def _record(tenant: str, ident: str, subject: str) -> ResultRow:
    return ResultRow(
        id=ident, tenant=tenant, label="male", confidence=0.8, scores={"male": 0.8},
        model_name="egg_sexing", model_version="1.0.0", created_at_us=1, ingested_at_us=2,
        stored_at_us=3, latency_ms=1.0, app="eggs", subject=subject, head="sex",
        root_id=f"scan-{ident}",
    )  # fmt: skip


def test_erase_needs_the_subject_confirmed_then_erases_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_url, blob_url = f"sqlite:///{tmp_path / 'results.db'}", f"file://{tmp_path / 'blobs'}"
    blobs = LocalBlobStore(tmp_path / "blobs")
    digest = blobs.put(b"the scan of egg 7", "acme").sha256
    with ResultsStore(store_url) as store:
        store.upsert_results([_record("acme", "r7", "EGG-7"), _record("acme", "r8", "EGG-8")])
        scan = ScanRecord("acme", "scan-r7", "application/dicom", 17, digest, "EGG-7", None,
                          None, "dev", "t", 1)  # fmt: skip
        Accounts(store).record_scans([scan])
    base = ["erase", str(APP.pipeline_path()), "acme", "EGG-7", "--store", store_url,
            "--blobs", blob_url]  # fmt: skip

    assert main([*base, "--confirm", "EGG-8"]) == 2
    assert "confirm with --confirm EGG-7" in capsys.readouterr().err
    assert main([*base, "--confirm", "EGG-7"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert (done["records"], done["predictions"], done["scans"], done["blobs_deleted"]) == (
        1, 1, 1, 1
    )  # fmt: skip
    assert main([*base, "--confirm", "EGG-7"]) == 2
    assert "holds nothing of subject 'EGG-7'" in capsys.readouterr().err

    with ResultsStore(store_url) as store:
        assert [row.id for row in store.list_results("acme").items] == ["r8"]
        (entry,) = AuditLog(store).entries("acme")
    assert entry.entry.actor_kind == "cli" and entry.entry.action == "erase subject"
    assert not (tmp_path / "blobs" / "acme" / digest[:2] / digest).exists()


def test_expire_deletes_a_tenants_old_results_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_url = f"sqlite:///{tmp_path / 'results.db'}"
    with ResultsStore(store_url) as store:  # stored at 3 µs after 1970: long expired
        store.upsert_results([_record("acme", "a1", "EGG-1"), _record("globex", "g1", "EGG-1")])
    base = ["expire", str(APP.pipeline_path()), "acme", "--store", store_url,
            "--blobs", f"file://{tmp_path / 'blobs'}"]  # fmt: skip
    assert main([*base, "--older-than-days", "0"]) == 2
    assert "--older-than-days must be > 0" in capsys.readouterr().err
    assert main([*base, "--older-than-days", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 1
    with ResultsStore(store_url) as store:
        assert store.count_results("acme") == 0
        assert [row.id for row in store.list_results("globex").items] == ["g1"]
