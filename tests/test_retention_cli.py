"""``inferstream retention set|show|clear`` on a pipeline's store: the policy is stored,
shown, replaced and cleared, each change in the tenant's audit log; bad input is
refused with what to do."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from inferstream.api.accounts import Accounts
from inferstream.apps.eggs import APP
from inferstream.cli import main
from inferstream.store import ResultsStore
from inferstream.store.audit import AuditLog
from inferstream.store.retention import CLEAR_ACTION, SET_ACTION, get_policy


def test_retention_set_show_clear_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    acme, globex = f"acme-{uuid.uuid4().hex[:6]}", f"globex-{uuid.uuid4().hex[:6]}"
    with ResultsStore(url) as store:
        for tenant in (acme, globex):
            Accounts(store).create_tenant(tenant)
    file, store = str(APP.pipeline_path()), ["--store", url]

    def retention(command: str, *args: str) -> int:
        return main(["retention", command, file, *args, *store])

    assert retention("show") == 0
    assert "no tenant has a retention policy" in capsys.readouterr().out
    assert retention("set", acme, "--keep-days", "30") == 0
    assert f"tenant {acme}: results kept 30 days (set by cli:" in capsys.readouterr().out
    assert retention("set", globex, "--keep-days", "7") == 0
    capsys.readouterr()
    assert retention("show") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == [f"tenant {acme}", f"tenant {globex}"]
    assert lines[2] == "topics keep no message over 7 days (the shortest policy)"
    assert retention("clear", acme) == 0
    assert "policy of 30 days cleared" in capsys.readouterr().out
    assert retention("show", acme) == 0
    assert f"tenant {acme} has no retention policy" in capsys.readouterr().out
    assert retention("clear", acme) == 0
    assert "nothing to clear" in capsys.readouterr().out

    with ResultsStore(url) as store:
        assert get_policy(store, acme) is None
        assert get_policy(store, globex) is not None
        entries = [s.entry for s in AuditLog(store).entries(acme)]
    assert [(e.action, json.loads(e.target)) for e in entries] == [
        (SET_ACTION, {"keep_days": 30}), (CLEAR_ACTION, {"keep_days": 30})
    ]  # fmt: skip
    assert all(e.actor.startswith("cli:") and e.actor_kind == "cli" for e in entries)


def test_bad_input_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = [str(APP.pipeline_path()), "--store", f"sqlite:///{tmp_path / 'r.db'}"]
    assert main(["retention", "set", *where, "nobody", "--keep-days", "30"]) == 2
    err = capsys.readouterr().err
    assert "no tenant 'nobody'" in err and "inferstream admin create-tenant" in err
    for days, said in (("0", "is not from 1 to 36500"), ("1.5", "is not a whole number")):
        with pytest.raises(SystemExit) as exited:
            main(["retention", "set", *where, "acme", "--keep-days", days])
        assert exited.value.code == 2 and said in capsys.readouterr().err
