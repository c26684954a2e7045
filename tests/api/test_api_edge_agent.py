"""``inferstream edge`` against a real centre (the API under uvicorn, the flagship
pipeline in threads): scans from a watched folder and from DCMTK's storescu reach the
centre once each, across an uplink outage and the agent's own SIGKILL, twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from api_testing import JWT_SECRET, dicom_bytes, free_port, serve_app, start_world

from inferstream.api import ApiSettings
from inferstream.apps.eggs import APP
from inferstream.pipeline import load_pipeline
from inferstream.store import ResultFilter, ResultsStore
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow

#: How long the uplink is down (the issue asks for 30 s; INFERSTREAM_OUTAGE_S to change).
OUTAGE_S = float(os.environ.get("INFERSTREAM_OUTAGE_S", "30"))


def _drop(inbox: Path, seeds: range) -> None:
    for seed in seeds:
        hidden = inbox / f".scan-{seed}.dcm.part"
        hidden.write_bytes(dicom_bytes(seed=seed))
        os.replace(hidden, inbox / f"scan-{seed}.dcm")


class Agent:
    """``inferstream edge`` as a process, its output read line by line as it comes."""

    def __init__(self, api: str, key: str, tmp_path: Path, dicom_port: int) -> None:
        argv = [sys.executable, "-m", "inferstream", "edge", "--app", "eggs", "--api", api,
                "--buffer", str(tmp_path / "buffer"), "--folder", str(tmp_path / "inbox"),
                "--dicom-port", str(dicom_port), "--dicom-host", "127.0.0.1", "--report", "0.5",
                "--batch", "4"]  # fmt: skip
        env = dict(os.environ, INFERSTREAM_API_KEY=key)
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        _wait_for_port(dicom_port, self.proc)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def end(self, sig: int) -> str:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return "".join(self.lines)


def _wait_for_port(port: int, proc: subprocess.Popen[str]) -> None:
    """Until the agent's receiver listens (it started)."""
    import socket

    for _ in range(300):
        assert proc.poll() is None, "the agent exited"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"the agent's receiver never listened on {port}")


def _subjects(store: ResultsStore, tenant: str) -> list[str]:
    rows = store.list_results(tenant, ResultFilter(), limit=1000).items
    return sorted(r.subject or "" for r in rows)


def test_every_scan_reaches_the_centre_once_across_an_outage_and_two_sigkills(
    tmp_path: Path,
) -> None:
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}",
        store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )
    settings = ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6)
    worlds = start_world(settings)
    world = next(worlds)
    key = world.headers(world.own, "device")["X-API-Key"]
    (tmp_path / "inbox").mkdir()
    api_port, dicom_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    store = ResultsStore(spec.store)
    expected = sorted(f"EGG-{seed:06d}" for seed in range(60))
    with pipeline_threads(spec, replicas=1):
        agent = Agent(api, key, tmp_path, dicom_port)
        said = ""
        try:
            with serve_app(settings, port=api_port):
                _drop(tmp_path / "inbox", range(20))
                scans = tmp_path / "scans"
                scans.mkdir()
                for seed in range(20, 30):
                    (scans / f"{seed}.dcm").write_bytes(dicom_bytes(seed=seed))
                sent = subprocess.run(
                    ["storescu", "-aec", "INFERSTREAM", "127.0.0.1", str(dicom_port),
                     *sorted(map(str, scans.iterdir()))],
                    capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                assert sent.returncode == 0, sent.stdout + sent.stderr
                _until(lambda: len(_subjects(store, world.own)) >= 5, 60)
            # The uplink is down: scans keep coming, and are kept at the edge.
            down = time.monotonic()
            _drop(tmp_path / "inbox", range(30, 45))
            _until(lambda: agent.said("retries"), 30)
            time.sleep(min(3.0, OUTAGE_S / 3))
            said += agent.end(signal.SIGKILL)  # mid-retry, its batch not accepted
            agent = Agent(api, key, tmp_path, dicom_port)
            _drop(tmp_path / "inbox", range(45, 60))
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
            with serve_app(settings, port=api_port):
                # The backlog drains, 4 scans a request; the agent is killed as it does.
                _until(lambda: len(_subjects(store, world.own)) >= 35, 120)
                said += agent.end(signal.SIGKILL)
                agent = Agent(api, key, tmp_path, dicom_port)
                _until(lambda: len(_subjects(store, world.own)) >= 60, 180)
                _until(lambda: agent.said("backlog 0 scans"), 60)  # it says it caught up
                time.sleep(1.0)  # a double would have arrived by now
                got = _subjects(store, world.own)
        finally:
            said += agent.end(signal.SIGTERM)
            (tmp_path / "agent.log").write_text(said)
    store.close()
    worlds.close()
    assert got == expected, (len(got), said[-2000:])  # every scan, each once
    assert sorted(p.name for p in (tmp_path / "inbox" / "done").iterdir()) == sorted(
        f"scan-{seed}.dcm" for seed in [*range(20), *range(30, 60)]
    )


def _until(done: object, timeout_s: float) -> None:
    assert callable(done)
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_batch_the_centre_refuses_is_split_and_only_what_never_passes_is_set_aside(
    tmp_path: Path,
) -> None:
    """Bodies over the centre's limit (413): a batch of four splits until each request
    fits; a scan that alone is over it goes to edge.rejected with the centre's reason."""
    import hashlib
    from dataclasses import replace

    from dicom_builder import make_dataset, to_bytes
    from flow_testing import drain_topic

    from inferstream.admit import Admitter, source_id
    from inferstream.edge import OUTBOX, REJECTED, EdgeSettings, Forwarder, open_buffer
    from inferstream.envelope import parse

    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}", store=f"sqlite:///{tmp_path / 'results.db'}",
        blobs=f"file://{tmp_path / 'blobs'}",
    )  # fmt: skip
    small = len(dicom_bytes(seed=0)) * 2 + 4096  # two scans a request at most
    settings = replace(
        ApiSettings(spec, "scans.raw", JWT_SECRET, rate_per_s=1e6, burst=10**6),
        max_body_bytes=small,
    )
    worlds = start_world(settings)
    world = next(worlds)
    buffers = [open_buffer(tmp_path / "buffer") for _ in range(3)]
    admitter = Admitter(buffers[0], None, topic=OUTBOX, tenant="edge", app=APP)
    fixed = {"AccessionNumber": "TRAY-0042", "ClinicalTrialTimePointID": "12"}
    big = to_bytes(make_dataset(160, 160, 99, **fixed))  # alone over the limit
    for data in [dicom_bytes(seed=seed) for seed in range(7)] + [big]:
        ident = source_id("edge", hashlib.sha256(data).hexdigest())
        admitter.produce([admitter.wrap(admitter.check(data), ident=ident, source="test")])
    with serve_app(settings) as port:
        key = world.headers(world.own, "device")["X-API-Key"]
        edge = EdgeSettings(
            buffer=tmp_path / "buffer", api=f"http://127.0.0.1:{port}", api_key=key, batch=4
        )
        forwarder = Forwarder(buffers[1], edge, APP, watcher=buffers[2])
        stop = threading.Event()
        runner = threading.Thread(target=forwarder.run, args=(stop,))
        runner.start()
        _until(lambda: forwarder.counts.forwarded + forwarder.counts.rejected == 8, 60)
        stop.set()
        runner.join(timeout=30)
    assert (forwarder.counts.forwarded, forwarder.counts.rejected) == (7, 1)
    assert forwarder.backlog() == 0
    (rejected,) = [parse(m.value) for m in drain_topic(buffers[2], REJECTED, 1)]
    assert rejected.error.message.startswith("413") and rejected.error.stage == "edge-forwarder"
    for bus in buffers:
        bus.close()
    worlds.close()
