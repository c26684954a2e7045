"""Soak: the flagship under ``inferstream up`` for an hour at a steady rate, a worker
killed (SIGKILL) every few minutes, memory and lag watched, every scan counted by id.

    .venv/bin/python bench/soak.py                      # an hour at 1,000 scans/s
    .venv/bin/python bench/soak.py --minutes 10 --rate 500 --kill-every 60

Prints a line per minute (RSS of the supervisor and of each stage's largest worker, lag
of each stage, scans stored), then the verdict: RSS of the first five minutes against the last
five (flat or not), the largest lag, and sent against stored by id (lost, doubled).
The baseline is the run's own start. The bus keeps six minutes of scans (retention
applied by ``up`` every minute), so an hour fits on disk.
"""

from __future__ import annotations

import argparse
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import psutil
from flagship_load import paced

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.dicomgen import to_dicom_bytes
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.bus import Record, open_bus
from inferstream.envelope import new_envelope

TENANT = "soak"
DISTINCT_SCANS = 500  # rendered once, sent again and again under new envelope ids


def _pipeline(folder: Path) -> Path:
    """The flagship's file on the soak's own URLs, keeping six minutes of scans."""
    text = APP.pipeline_path().read_text().replace("retention_hours: 24", "retention_hours: 0.1")
    path = folder / "eggs-soak.yaml"
    path.write_text(text)
    return path


def _scans() -> list[bytes]:
    specs = make_specs(DISTINCT_SCANS, seed=2026)
    return [
        to_dicom_bytes(image, egg) for egg, image in zip(specs, render_batch(specs), strict=True)
    ]


class Producer:
    """Sends scans at a rate from a thread; remembers every id it sent."""

    def __init__(self, bus_url: str, rate: float, total: int) -> None:
        self.bus, self.rate, self.total = open_bus(bus_url), rate, total
        self.sent: list[str] = []
        self.scans = _scans()
        self.thread = threading.Thread(target=self._run, name="producer")

    def _send(self, first: int, end: int) -> None:
        envelopes = [
            new_envelope(self.scans[i % DISTINCT_SCANS], "application/dicom", tenant=TENANT,
                         key=f"egg-{i}")
            for i in range(first, end)
        ]  # fmt: skip
        records = [Record(e.partition_key.encode(), e.SerializeToString()) for e in envelopes]
        while True:
            try:
                self.bus.produce("scans.raw", records)
                break
            except Exception as exc:  # a transient bus error: the soak's producer retries
                print(f"  producer: {exc}; retrying", flush=True)
                time.sleep(0.5)
        self.sent.extend(e.id for e in envelopes)

    def _run(self) -> None:
        paced(self.rate, self.total, self._send)


def _workers(up: psutil.Process) -> dict[str, list[psutil.Process]]:
    stages: dict[str, list[psutil.Process]] = {}
    for child in up.children(recursive=True):
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        if "--stage" in argv:
            stages.setdefault(argv[argv.index("--stage") + 1], []).append(child)
    return stages


def _rss_mib(procs: list[psutil.Process]) -> float:
    """The largest RSS among ``procs`` (a stage's replicas), MiB."""
    largest = 0.0
    for proc in procs:
        with suppress(psutil.Error):
            largest = max(largest, proc.memory_info().rss / 2**20)
    return largest


def _lag(bus_url: str, groups: dict[str, str]) -> dict[str, int]:
    bus = open_bus(bus_url)
    try:
        return {stage: sum(p.lag for p in bus.partitions(topic, f"eggs.{stage}"))
                for stage, topic in groups.items()}  # fmt: skip
    finally:
        bus.close()


def _stored(db: Path) -> tuple[int, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        row = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT root_id) FROM records WHERE tenant = ?", (TENANT,)
        ).fetchone()
    return int(row[0]), int(row[1])


def _stored_ids(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT root_id FROM records WHERE tenant = ?", (TENANT,))
        return [r[0] for r in rows]


@contextmanager
def _up(pipeline: Path, bus: str, store: str, blobs: str, log: Path) -> Iterator[psutil.Process]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferstream", "up", str(pipeline), "--bus", bus,
             "--store", store, "--blobs", blobs, "--drain-timeout", "30"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to send (60)")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="scans/s (1,000: the flagship's)"
    )
    parser.add_argument(
        "--kill-every", type=float, default=180.0, help="seconds between SIGKILLs (180)"
    )
    parser.add_argument(
        "--folder", type=Path, help="where the run's files go (a new temporary folder)"
    )
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    bus = f"sqlite:///{folder / 'bus.db'}?session_timeout_s=2"
    db = folder / "results.db"
    total = int(args.minutes * 60 * args.rate)
    print(f"soak: {args.minutes:g} min at {args.rate:g} scans/s ({total:,} scans), a worker "
          f"killed every {args.kill_every:g} s; files in {folder}", flush=True)  # fmt: skip
    producer = Producer(bus, args.rate, total)
    rows: list[tuple[float, float, dict[str, float], dict[str, int], int]] = []
    kills = 0
    with _up(_pipeline(folder), bus, f"sqlite:///{db}", f"file://{folder / 'blobs'}",
             folder / "up.log") as up:  # fmt: skip
        time.sleep(5.0)  # the workers load their models
        groups = {"classify": "scans.raw", "store": "scans.predicted"}
        started = time.monotonic()
        producer.thread.start()
        next_kill, next_row = started + args.kill_every, started + 60.0
        while producer.thread.is_alive():
            time.sleep(1.0)
            now = time.monotonic()
            if now >= next_kill:
                victims = [w for ws in _workers(up).values() for w in ws]
                if victims:
                    random.choice(victims).send_signal(signal.SIGKILL)
                    kills += 1
                next_kill += args.kill_every
            if now >= next_row:
                rows.append(_row(now - started, up, bus, groups, db))
                next_row += 60.0
        drained_in = _drain(bus, groups, db, total)
        rows.append(_row(time.monotonic() - started, up, bus, groups, db))
    _report(rows, kills, drained_in, producer.sent, _stored_ids(db))
    producer.bus.close()
    return 0


def _row(t: float, up: psutil.Process, bus: str, groups: dict[str, str], db: Path
         ) -> tuple[float, float, dict[str, float], dict[str, int], int]:  # fmt: skip
    stages = {name: _rss_mib(procs) for name, procs in sorted(_workers(up).items())}
    lag = _lag(bus, groups)
    stored, _ = _stored(db)
    wal = db.with_name("bus.db-wal")
    wal_mib = wal.stat().st_size / 2**20 if wal.exists() else 0.0
    print(f"  {t / 60:5.1f} min | supervisor {_rss_mib([up]):6.1f} MiB | "
          + " | ".join(f"{name} {mib:6.1f} MiB" for name, mib in stages.items())
          + " | lag " + ", ".join(f"{s} {n:,}" for s, n in lag.items())
          + f" | stored {stored:,} | bus log {wal_mib:,.0f} MiB", flush=True)  # fmt: skip
    return t, _rss_mib([up]), stages, lag, stored


def _drain(bus: str, groups: dict[str, str], db: Path, total: int) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 600:
        if _stored(db)[0] >= total and not any(_lag(bus, groups).values()):
            break
        time.sleep(2.0)
    return time.monotonic() - started


def _report(rows: list[tuple[float, float, dict[str, float], dict[str, int], int]], kills: int,
            drained_in: float, sent: list[str], stored: list[str]) -> None:  # fmt: skip
    first, last = rows[: min(5, len(rows))], rows[-6:-1] or rows[-1:]
    print(f"\nworkers killed: {kills}; drained {drained_in:.0f} s after the last scan was sent")
    for name in sorted(rows[0][2]):
        before = float(np.mean([r[2].get(name, 0.0) for r in first]))
        after = float(np.mean([r[2].get(name, 0.0) for r in last]))
        print(f"RSS {name:>10}: first 5 min {before:7.1f} MiB, last 5 min {after:7.1f} MiB "
              f"({after / before:.2f}x)")  # fmt: skip
    worst = {s: max(r[3].get(s, 0) for r in rows) for s in rows[0][3]}
    print("largest lag: " + ", ".join(f"{s} {n:,}" for s, n in worst.items()))
    sent_ids, stored_ids = set(sent), stored
    lost = len(sent_ids - set(stored_ids))
    doubled = len(stored_ids) - len(set(stored_ids))
    print(f"sent {len(sent):,}, stored {len(stored_ids):,}: lost {lost}, doubled {doubled}")


if __name__ == "__main__":
    sys.exit(main())
