"""``inferstream grants add|list|revoke`` on a pipeline's store: the grant made from the
command line admits exactly its slice, is listed to both parties, is revoked, and both
changes are in the owner's audit log; bad input is refused with what to do."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from inferstream.api.accounts import Accounts
from inferstream.apps.eggs import APP
from inferstream.cli import main
from inferstream.store import ResultRow, ResultsStore
from inferstream.store.audit import AuditLog
from inferstream.store.sharing import Sharing

TRAYS = ("TRAY-0005", "TRAY-0012", "TRAY-0019", "TRAY-0025")


def _row(tenant: str, n: int, tray: str) -> ResultRow:
    return ResultRow(
        id=f"r{n}", tenant=tenant, label="female", confidence=0.9, scores={"female": 0.9},
        model_name="egg_sexing", model_version="1.0.0", created_at_us=1_000 + n,
        ingested_at_us=2_000, stored_at_us=3_000 + n, latency_ms=1.0, app="eggs",
        subject=f"EGG-{n}", group=tray, source="S1", head="sex",
        attributes={"egg_id": f"EGG-{n}", "tray": tray, "scanner": "S1"},
    )  # fmt: skip


def test_grants_add_list_revoke_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    hatchery, lab = f"hatchery-{uuid.uuid4().hex[:6]}", f"lab-{uuid.uuid4().hex[:6]}"
    with ResultsStore(url) as store:
        for tenant in (hatchery, lab):
            Accounts(store).create_tenant(tenant)
        store.upsert_results([_row(hatchery, n, tray) for n, tray in enumerate(TRAYS)])
    where = [str(APP.pipeline_path()), "--store", url]
    add = ["grants", "add", *where, "--owner", hatchery, "--grantee", lab, "--expires", "30d"]
    assert main([*add, "--where", "tray=TRAY-0010..TRAY-0020", "--mask", "egg_id"]) == 0
    made = capsys.readouterr().out
    assert "tray=TRAY-0010..TRAY-0020" in made and "masked egg_id" in made
    grant_id = made.split()[1].rstrip(":")
    with ResultsStore(url) as store:
        seen = Sharing(store).list_visible(lab).items
        assert {item.row.id for item in seen} == {"r1", "r2"}
        assert all("egg_id" not in item.row.attributes for item in seen)
    for tenant in (hatchery, lab):
        assert main(["grants", "list", *where, "--tenant", tenant]) == 0
        assert capsys.readouterr().out.startswith(f"{grant_id} [live] {hatchery} -> {lab}")
    assert main(["grants", "revoke", *where, grant_id, "--owner", hatchery, "--reason", "T-1"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["grants", "list", *where, "--tenant", lab]) == 0
    assert capsys.readouterr().out.startswith(f"{grant_id} [revoked]")
    with ResultsStore(url) as store:
        assert Sharing(store).list_visible(lab).items == []
        actions = [stored.entry.action for stored in AuditLog(store).entries(hatchery)]
        assert actions == ["cli grants add", "cli grants revoke"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--where", "colour=red"], "'colour' is no attribute"),
        (["--where", "tray"], "not NAME=VALUE"),
        (["--where", "incubation_day=ten"], "not a number"),
        (["--mask", "password"], "no attribute"),
        (["--since", "2026-01-01"], "no time zone"),
    ],
)
def test_grants_add_refuses_what_cannot_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ResultsStore(url) as store:
        for tenant in ("hatchery", "lab"):
            Accounts(store).create_tenant(tenant)
    where = [str(APP.pipeline_path()), "--store", url]
    add = ["grants", "add", *where, "--owner", "hatchery", "--grantee", "lab", "--expires", "1d"]
    assert main([*add, *extra]) != 0
    assert message in capsys.readouterr().err
    assert main(["grants", "add", *where, "--owner", "hatchery", "--grantee", "nobody",
                 "--expires", "1d"]) != 0  # fmt: skip
    assert "no tenant 'nobody'" in capsys.readouterr().err
    assert main(["grants", "revoke", *where, "g-0000000000000000", "--owner", "hatchery"]) != 0
    assert "no grant" in capsys.readouterr().err
