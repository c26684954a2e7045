"""The CLI: admin commands create what the API accepts; ``serve`` answers over TLS."""

from __future__ import annotations

import io
import json
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from broker_testing import free_port

from inferstream.apps.eggs import APP
from inferstream.cli import main
from inferstream.errors import ConfigError
from inferstream.pipeline import load_pipeline
from inferstream.supervisor import api_child


def _urls(tmp_path: Path) -> list[str]:
    return [
        "--bus", f"sqlite:///{tmp_path / 'bus.db'}",
        "--store", f"sqlite:///{tmp_path / 'results.db'}",
        "--blobs", f"file://{tmp_path / 'blobs'}",
    ]  # fmt: skip


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _get(url: str, context: ssl.SSLContext, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, context=context, timeout=5) as answer:
        body: bytes = answer.read()
    return body


def _wait_ready(url: str, context: ssl.SSLContext, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve exited early"
        try:
            _get(url, context)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("serve did not become ready")


def test_admin_commands_then_serve_over_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = str(APP.pipeline_path())
    assert main(["admin", "create-tenant", pipeline, *_urls(tmp_path), "acme"]) == 0
    assert main(["admin", "create-tenant", pipeline, *_urls(tmp_path), "acme"]) == 2  # exists
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    args = ["--tenant", "acme", "--username", "bob", "--role", "viewer"]
    assert main(["admin", "create-user", pipeline, *_urls(tmp_path), *args]) == 0
    capsys.readouterr()
    args = ["--tenant", "acme", "--name", "scanner-03", "--role", "device"]
    assert main(["admin", "create-key", pipeline, *_urls(tmp_path), *args]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("isk.acme.")
    missing = ["--tenant", "nope", "--name", "x", "--role", "viewer"]
    assert main(["admin", "create-key", pipeline, *_urls(tmp_path), *missing]) == 2

    cert, private = _self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferstream", "serve", pipeline, *_urls(tmp_path),
         "--port", str(port), "--certfile", str(cert), "--keyfile", str(private)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        context = ssl.create_default_context(cafile=str(cert))
        base = f"https://127.0.0.1:{port}"
        _wait_ready(f"{base}/healthz", context, proc)
        whoami = _get(f"{base}/v1/whoami", context, {"X-API-Key": key})
        assert b'"tenant":"acme"' in whoami and b'"role":"device"' in whoami
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert key.rsplit(".", 1)[1].encode() not in stderr  # the secret never reaches the logs
    assert b'"route": "/v1/whoami"' in stderr  # JSON access lines by route template


def test_revoke_key_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inferstream.api.accounts import Accounts
    from inferstream.api.auth import principal_from_key
    from inferstream.api.errors import Unauthorized
    from inferstream.store import ResultsStore

    pipeline = str(APP.pipeline_path())
    assert main(["admin", "create-tenant", pipeline, *_urls(tmp_path), "acme"]) == 0
    args = ["--tenant", "acme", "--name", "scanner-03", "--role", "device"]
    assert main(["admin", "create-key", pipeline, *_urls(tmp_path), *args]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    key_id = key.split(".")[2]

    revoke = ["admin", "revoke-key", pipeline, *_urls(tmp_path), "--tenant", "acme"]
    assert main([*revoke, key_id]) == 0
    assert main([*revoke, "0123456789ab"]) == 2  # no such key: says so, exit code 2
    assert "has no key" in capsys.readouterr().err

    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    try:
        with pytest.raises(Unauthorized, match="revoked"):
            principal_from_key(Accounts(store), key)
    finally:
        store.close()


def test_up_serve_child_runs_the_api_with_the_pipelines_urls() -> None:
    spec = load_pipeline(APP.pipeline_path())
    child = api_child(spec, "127.0.0.1:8123")
    assert child.argv[2:5] == ["inferstream", "serve", str(spec.source)]
    assert child.argv[child.argv.index("--port") + 1] == "8123"
    assert child.argv[child.argv.index("--store") + 1] == spec.store
    with pytest.raises(ConfigError, match="HOST:PORT"):
        api_child(spec, "8123")


def test_serve_workers_accept_each_others_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = str(APP.pipeline_path())
    assert main(["admin", "create-tenant", pipeline, *_urls(tmp_path), "acme"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    args = ["--tenant", "acme", "--username", "bob", "--role", "viewer"]
    assert main(["admin", "create-user", pipeline, *_urls(tmp_path), *args]) == 0
    monkeypatch.delenv("INFERSTREAM_JWT_SECRET", raising=False)  # serve must make one to share
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferstream", "serve", pipeline, *_urls(tmp_path),
         "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        context = ssl.create_default_context()
        _wait_ready(f"{base}/healthz", context, proc)
        form = urllib.parse.urlencode({"username": "acme/bob", "password": "correct horse battery"})
        with urllib.request.urlopen(f"{base}/auth/token", form.encode(), timeout=10) as answer:
            token = json.loads(answer.read())["access_token"]
        # Each request is a new connection, which either worker may accept.
        for _ in range(20):
            whoami = _get(f"{base}/v1/whoami", context, {"Authorization": f"Bearer {token}"})
            assert b'"tenant":"acme"' in whoami
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.fixture
def fresh_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with nothing in it, where the eggs file's default URLs apply."""
    monkeypatch.chdir(tmp_path)
    for name in ("INFERSTREAM_BUS", "INFERSTREAM_STORE", "INFERSTREAM_BLOBS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_create_tenant_in_a_fresh_directory_makes_the_stores_folder(
    fresh_directory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin", "create-tenant", str(APP.pipeline_path()), "acme"]) == 0
    assert "tenant 'acme' created" in capsys.readouterr().out
    assert (fresh_directory / ".inferstream" / "eggs" / "results.db").is_file()


@pytest.mark.parametrize(
    "action",
    [
        ["create-user", "--tenant", "acme", "--username", "bob", "--role", "viewer"],
        ["create-key", "--tenant", "acme", "--name", "scanner-03", "--role", "device"],
        ["revoke-key", "--tenant", "acme", "0123456789ab"],
    ],
    ids=lambda action: action[0],
)
def test_other_admin_commands_in_a_fresh_directory_say_what_to_do(
    fresh_directory: Path, capsys: pytest.CaptureFixture[str], action: list[str]
) -> None:
    name, *args = action
    assert main(["admin", name, str(APP.pipeline_path()), *args]) == 2
    assert "tenant 'acme' does not exist; create it with" in capsys.readouterr().err


def test_serve_makes_the_folder_of_a_new_store(fresh_directory: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferstream", "serve", str(APP.pipeline_path()),
         "--store", "sqlite:///data/results.db", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_ready(f"http://127.0.0.1:{port}/healthz", ssl.create_default_context(), proc)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert (fresh_directory / "data" / "results.db").is_file()
