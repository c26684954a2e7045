"""``inferstream worker --metrics-port``: on a cluster each worker is a pod of its own, so it
serves its own metrics page for Prometheus to scrape (deploy/k8s scrapes it)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from processes import wait_until

from inferstream.bus import Record, open_bus
from inferstream.envelope import new_envelope

PIPELINE = """
name: scraped
bus: sqlite:///{tmp}/bus.db
store: sqlite:///{tmp}/results.db
blobs: file://{tmp}/blobs
topics:
  jobs: {{partitions: 1}}
stages:
  - name: copy
    input: jobs
    output: copied
    steps: [passthrough]
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _worker(pipeline: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "inferstream", "worker", str(pipeline), "--stage", "copy",
            "--metrics-port", str(port)]  # fmt: skip


def _page(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def test_a_worker_serves_its_own_metrics_on_the_port_given(tmp_path: Path) -> None:
    pipeline = tmp_path / "scraped.yaml"
    pipeline.write_text(PIPELINE.format(tmp=tmp_path))
    port = _free_port()
    worker = subprocess.Popen(_worker(pipeline, port))
    try:
        assert wait_until(lambda: "inferstream_" in _page(port), 60), "no metrics page"
        bus = open_bus(f"sqlite:///{tmp_path}/bus.db")
        try:
            envelopes = [new_envelope(b"x", "application/octet-stream") for _ in range(3)]
            bus.produce("jobs", [Record(key=None, value=e.SerializeToString()) for e in envelopes])
        finally:
            bus.close()
        done = 'inferstream_messages_out_total{pipeline="scraped",stage="copy"} 3.0'
        assert wait_until(lambda: done in _page(port), 60), _page(port)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0


def test_a_port_in_use_is_a_configuration_error_naming_the_flag(tmp_path: Path) -> None:
    pipeline = tmp_path / "scraped.yaml"
    pipeline.write_text(PIPELINE.format(tmp=tmp_path))
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = subprocess.run(_worker(pipeline, port), capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
    assert ran.returncode == 2, ran.stderr
    assert f"cannot serve metrics on port {port}" in ran.stderr
    assert "--metrics-port" in ran.stderr
