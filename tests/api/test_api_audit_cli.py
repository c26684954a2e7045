"""``inferstream audit verify|export``, and the entries the ``admin`` commands leave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from inferstream.apps.eggs import APP
from inferstream.cli import main
from inferstream.store.audit import AUDIT_KEY_ENV


def test_admin_commands_are_audited_and_the_cli_verifies_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUDIT_KEY_ENV, "k" * 32)
    pipeline, store = str(APP.pipeline_path()), f"sqlite:///{tmp_path / 'results.db'}"
    urls = ["--store", store, "--bus", f"sqlite:///{tmp_path / 'bus.db'}"]
    assert main(["admin", "create-tenant", pipeline, *urls, "acme"]) == 0
    key = ["--tenant", "acme", "--name", "scanner-03", "--role", "device"]
    assert main(["admin", "create-key", pipeline, *urls, *key]) == 0
    key_id = capsys.readouterr().out.strip().splitlines()[-1].split(".")[2]
    assert main(["admin", "revoke-key", pipeline, *urls, "--tenant", "acme", key_id]) == 0
    capsys.readouterr()

    assert main(["audit", "export", pipeline, "--store", store, "--tenant", "acme"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["seq"], e["action"]) for e in lines] == [(1, "cli create-key"),
                                                        (2, "cli revoke-key")]  # fmt: skip
    assert all(key_id in e["target"] and e["actor_kind"] == "cli" for e in lines)
    assert main(["audit", "export", pipeline, "--store", store]) == 0  # the deployment's
    (created,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert created["action"] == "cli create-tenant" and "acme" in created["target"]

    assert main(["audit", "verify", pipeline, "--store", store, "--tenant", "acme"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    engine = create_engine(store)
    with engine.begin() as conn:  # a database admin, trigger dropped first
        conn.execute(text("DROP TRIGGER audit_log_no_update"))
        conn.execute(text("UPDATE audit_log SET target = '{}' WHERE tenant = 'acme' AND seq = 1"))
    engine.dispose()
    assert main(["audit", "verify", pipeline, "--store", store, "--tenant", "acme"]) == 1
    assert json.loads(capsys.readouterr().out)["first_broken"] == 1
