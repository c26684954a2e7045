"""Measuring tools of the flagship benchmark: process CPU/RSS, paced load, store reads.

- :class:`ProcMonitor` samples every watched process tree every 0.5 s (RSS per process,
  peak kept) and sums CPU time (user + system) over a tree, for CPU per scan.
- :func:`paced` calls a send function at an offered rate, in ticks, as a scanner fleet
  would; :func:`http_load` does the same over HTTP with the cheap ``http_lite`` client
  and a bounded pool of keep-alive connections (open loop at a rate, or closed loop
  when rate is None).
- :func:`phase_rows` reads what a phase stored (latency, times) straight from SQL.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psutil
from http_lite import Connection
from sqlalchemy import select

from inferstream.envelope import now_us
from inferstream.store import ResultsStore
from inferstream.store.schema import records

SAMPLE_S = 0.5


def _label(proc: psutil.Process) -> str:
    try:
        argv = proc.cmdline()
    except psutil.Error:
        return f"pid{proc.pid}"
    if "--stage" in argv:
        stage = argv[argv.index("--stage") + 1]
        replica = argv[argv.index("--replica") + 1] if "--replica" in argv else "0"
        return f"worker {stage}-{replica}"
    if "serve" in argv:
        return "api"
    if "up" in argv:
        return "supervisor"
    for name in ("celery", "uvicorn", "multiprocessing"):
        if any(name in arg for arg in argv):
            return name
    return argv[0].rsplit("/", 1)[-1] if argv else f"pid{proc.pid}"


@dataclass
class RssTrack:
    """RSS of one process over a window, in MiB."""

    label: str
    start: float = 0.0
    peak: float = 0.0
    end: float = 0.0


@dataclass
class ProcMonitor:
    """Watches named process trees; a background thread samples RSS every 0.5 s."""

    roots: dict[str, psutil.Process] = field(default_factory=dict)
    peaks: dict[str, dict[int, RssTrack]] = field(default_factory=dict)
    window: dict[int, RssTrack] | None = None
    window_system: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True, name="rss-sampler").start()

    def stop(self) -> None:
        self._stop.set()

    def watch(self, system: str, pid: int) -> None:
        with self._lock:
            self.roots[system] = psutil.Process(pid)
            self.peaks.setdefault(system, {})

    def tree(self, system: str) -> list[psutil.Process]:
        root = self.roots[system]
        if system == "bench":  # the load generator itself, not the systems it started
            return [root]
        try:
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_s(self, system: str) -> float:
        """CPU seconds (user + system) used so far by the tree's live processes."""
        total = 0.0
        for proc in self.tree(system):
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def peak_mib(self, system: str) -> dict[str, float]:
        """Peak RSS in MiB of every process ``system`` ran, by label."""
        with self._lock:
            return {t.label: t.peak for t in self.peaks.get(system, {}).values()}

    def open_window(self, system: str) -> None:
        """Start tracking start/peak/end RSS per process of ``system`` (the backlog test)."""
        with self._lock:
            self.window, self.window_system = {}, system
        self._sample()

    def close_window(self) -> list[RssTrack]:
        self._sample()
        with self._lock:
            tracks, self.window = list((self.window or {}).values()), None
        return sorted(tracks, key=lambda t: t.label)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            systems = list(self.roots)
        for system in systems:
            for proc in self.tree(system):
                try:
                    rss = proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                label = f"{_label(proc)} [{proc.pid}]"
                with self._lock:
                    peak = self.peaks[system].setdefault(proc.pid, RssTrack(label, start=rss))
                    peak.peak, peak.end = max(peak.peak, rss), rss
                    if not label.startswith("pid"):  # an exiting process loses its argv
                        peak.label = label
                    if self.window is not None and system == self.window_system:
                        track = self.window.setdefault(proc.pid, RssTrack(label, start=rss))
                        track.label, track.peak, track.end = label, max(track.peak, rss), rss


def paced(
    rate: float,
    total: int,
    send: Callable[[int, int], None],
    tick_s: float = 0.005,
    max_batch: int = 1000,
) -> float:
    """Call ``send(first, end)`` for ``total`` items at ``rate``/s; return seconds taken.

    At most ``max_batch`` items per call: when the sender falls behind it catches up
    in many calls of that size, as a fleet of scanners would, not in one huge one.
    """
    started = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        if due > sent:
            end = min(due, sent + max_batch)
            send(sent, end)
            sent = end
        if sent >= due:
            time.sleep(tick_s)
    return time.monotonic() - started


@dataclass
class HttpStats:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    first_error: str = ""


async def _http(
    url: str,
    request: Callable[[int, int], tuple[bytes, dict[str, str]]],
    rate: float | None,
    seconds: float,
    connections: int,
) -> HttpStats:
    stats = HttpStats()
    parts = urlsplit(url)
    base, path = f"{parts.scheme}://{parts.netloc}", parts.path
    # A pool of keep-alive connections: a request waits for a free one.
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(Connection(base))

    async def one(number: int) -> None:
        created = now_us()  # scheduled now: client-side queueing counts as latency
        conn = await idle.get()
        try:
            body, headers = request(number, created)
            response = await conn.request("POST", path, body=body, headers=headers)
        except (OSError, asyncio.IncompleteReadError) as exc:
            stats.errors += 1
            stats.first_error = stats.first_error or repr(exc)
            return
        finally:
            idle.put_nowait(conn)
        if response.status < 300:
            stats.ok += 1
        else:
            stats.errors += 1
            stats.first_error = stats.first_error or f"{response.status} {response.body[:200]!r}"

    started = time.monotonic()
    await _schedule(one, rate, seconds, connections)
    stats.seconds = time.monotonic() - started
    stats.sent = stats.ok + stats.errors
    while not idle.empty():
        await idle.get_nowait().close()
    return stats


async def _schedule(
    one: Callable[[int], Any], rate: float | None, seconds: float, connections: int
) -> None:
    """Open loop: request n starts at n / rate. Closed loop (no rate): every connection
    sends its next request as soon as its answer is in."""
    started = time.monotonic()
    if rate is None:

        async def loop(lane: int) -> None:
            number = lane
            while time.monotonic() - started < seconds:
                await one(number)
                number += connections

        await asyncio.gather(*(loop(lane) for lane in range(connections)))
        return
    tasks = []
    for number in range(int(rate * seconds)):
        delay = started + number / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(number)))
    await asyncio.gather(*tasks)


def http_load(
    url: str,
    request: Callable[[int, int], tuple[bytes, dict[str, str]]],
    *,
    rate: float | None,
    seconds: float,
    connections: int,
) -> HttpStats:
    """POST ``request(number, created_us)`` bodies to ``url`` for ``seconds``."""
    return asyncio.run(_http(url, request, rate, seconds, connections))


@dataclass(frozen=True)
class PhaseRows:
    latencies_ms: list[float]
    first_created_us: int
    last_stored_us: int

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        span = (self.last_stored_us - self.first_created_us) / 1e6
        return self.count / span if span > 0 else float("nan")

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phase_rows(store: ResultsStore, tenant: str) -> PhaseRows:
    query = select(records.c.latency_ms, records.c.created_at_us, records.c.stored_at_us).where(
        records.c.tenant == tenant
    )
    with store.engine.connect() as conn:
        rows: list[Any] = list(conn.execute(query))
    if not rows:
        return PhaseRows([], 0, 0)
    return PhaseRows([float(r[0]) for r in rows], min(r[1] for r in rows), max(r[2] for r in rows))


def wait_stored(store: ResultsStore, tenant: str, expected: int, stall_s: float = 30.0) -> int:
    """Poll until ``expected`` results of ``tenant`` are stored or progress stalls."""
    best, best_at = -1, time.monotonic()
    while True:
        count = store.count_results(tenant)
        if count >= expected:
            return count
        if count > best:
            best, best_at = count, time.monotonic()
        elif time.monotonic() - best_at > stall_s:
            return count
        time.sleep(0.1)


def steady_rate(samples: list[tuple[float, int]], skip: float = 0.3) -> float:
    """Slope of stored count over time, after the first ``skip`` share of the window."""
    if len(samples) < 3:
        return float("nan")
    begin = samples[int(len(samples) * skip)]
    end = samples[-1]
    return (end[1] - begin[1]) / max(end[0] - begin[0], 1e-9)


def sample_counts(
    store: ResultsStore, tenant: str, until: Callable[[], bool], every_s: float = 0.25
) -> list[tuple[float, int]]:
    """(time, stored count) samples until ``until()`` says stop."""
    samples: list[tuple[float, int]] = []
    while not until():
        samples.append((time.monotonic(), store.count_results(tenant)))
        time.sleep(every_s)
    samples.append((time.monotonic(), store.count_results(tenant)))
    return samples
