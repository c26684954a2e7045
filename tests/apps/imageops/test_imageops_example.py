"""``inferstream example imageops`` itself, small: supervised worker processes and the API
on the embedded defaults, and on the Kafka-protocol broker; every output checked by id
against its operations (0 lost, 0 doubled, 0 wrong)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
JOBS = 4


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def run_example(tmp_path: Path, *extra: str) -> dict[str, Any]:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "inferstream", "example", "imageops", "--jobs", str(JOBS),
            "--concurrency", "2", "--serve", _free_address(), "--no-linger",
            "--workdir", str(tmp_path / "work"), "--tenant", f"t-{uuid.uuid4().hex[:8]}",
            "--summary-json", str(summary), *extra,
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "jobs submitted" in done.stdout, "no progress line was printed"
    result: dict[str, Any] = json.loads(summary.read_text())
    return result


def check(summary: dict[str, Any]) -> None:
    assert summary["jobs"] == JOBS and summary["files"] == 3 * JOBS
    assert summary["outputs_stored"] == summary["outputs_expected"] > 0
    assert summary["lost"] == summary["doubled"] == summary["wrong"] == 0
    assert summary["downloaded"] == summary["outputs_expected"]
    assert summary["throughput_outputs_per_s"] > 0
    assert 0 < summary["job_latency_p50_ms"] <= summary["job_latency_p99_ms"]


def test_the_example_on_the_embedded_defaults(tmp_path: Path) -> None:
    check(run_example(tmp_path))


def test_the_example_on_kafka(tmp_path: Path, kafka_url: str) -> None:
    check(run_example(tmp_path, "--bus", kafka_url))
