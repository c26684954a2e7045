"""The systems under test in the flagship benchmark, each behind the same small interface.

A :class:`System` is started as subprocesses, watched by the :class:`ProcMonitor`, and
offered scans: ``offer(tenant, rate, count)`` sends ``count`` scans at ``rate``/s and
returns when the last one is sent; every scan's result lands in a SQLite results
table read by :func:`flagship_load.phase_rows`. The systems:

- :class:`BusPipeline`: ``inferstream up`` on the eggs pipeline, fed through the
  embedded bus by the scanner simulator (pre-encoded pool), as ``inferstream example
  eggs`` does; with ``serve`` it also runs the API, and :class:`HttpPipeline` feeds
  ``POST /v1/scans`` (raw DICOM, one key per virtual scanner) instead;
- :class:`CeleryPeer` and :class:`FastApiPeer`: the peers of ``flagship_peers``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis
from flagship_load import ProcMonitor, http_load, paced, wait_stored

from inferstream.api.accounts import Accounts
from inferstream.api.auth import issue_key
from inferstream.apps.eggs.demo import DemoSettings, fresh_workdir, pipeline_spec, start_pipeline
from inferstream.apps.eggs.simulator import Emission, ScannerSimulator, ScanPool, stamp
from inferstream.bus import Bus, open_bus
from inferstream.envelope import new_id, now_us
from inferstream.runner import ensure_topics
from inferstream.store import ResultsStore

BENCH_DIR = Path(__file__).resolve().parent
REDIS_URL = "redis://127.0.0.1:6379/5"  # a db of its own, flushed before and after
SCANNERS = 8
START_TIMEOUT_S = 120.0
#: Scans per bus produce when the pipeline is offered scans (5 ms ticks).
OFFER_BATCH = 64


def http_status(url: str) -> int:
    """Status of a GET; OSError when nothing answers."""
    with urllib.request.urlopen(url, timeout=2) as answer:
        return int(answer.status)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class System:
    """Base: subprocess handling, the results store, warm-up."""

    name = "system"

    def __init__(self, pool: ScanPool, monitor: ProcMonitor, workdir: Path) -> None:
        self.pool = pool
        self.monitor = monitor
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.store: ResultsStore | None = None

    def scan(self, number: int, tag: str) -> tuple[bytes, str, str]:
        """DICOM bytes, egg id and scanner of scan ``number`` (stamped, unique)."""
        scan, scanner = self.pool.pick(number, SCANNERS)
        data, egg_id, _ = stamp(scan, number, tag, scanner)
        return data, egg_id, scanner

    def _spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{self.name}.log").open("ab")
        env = dict(os.environ, PYTHONPATH=str(BENCH_DIR), **env)
        proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, cwd=BENCH_DIR)
        self.procs.append(proc)
        self.monitor.watch(self.name, proc.pid)
        return proc

    def start(self) -> None:
        raise NotImplementedError

    def offer(self, tenant: str, rate: float, count: int) -> None:
        raise NotImplementedError

    def warm_up(self, count: int = 8) -> None:
        """Send a few scans and wait for all of them (model loads, first queries)."""
        assert self.store is not None
        self.offer("warm-up", 1e6, count)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.store.count_results("warm-up") < count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                log = (self.workdir / f"{self.name}.log").read_text()[-2000:]
                raise SystemExit(f"{self.name} did not start; its log ends:\n{log}")
            time.sleep(0.1)

    def settle(self) -> None:
        """After an overload phase: let (or make) the backlog go away."""

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.store is not None:
            self.store.close()


class BusPipeline(System):
    """The flagship: ``inferstream up`` fed through the embedded bus."""

    name = "pipeline"
    serve: str | None = None

    def start(self) -> None:
        settings = DemoSettings(workdir=self.workdir / self.name, serve=self.serve)
        fresh_workdir(settings.workdir)
        spec = pipeline_spec(settings)
        self.bus: Bus = open_bus(spec.bus)
        ensure_topics(self.bus, spec)
        self.store = ResultsStore(spec.store)
        self.prepare()
        self.spec = spec
        self.resume()
        self.warm_up()

    def prepare(self) -> None:
        """Hook before the processes start."""

    def pause(self) -> None:
        """Stop ``inferstream up`` (its workers drain and exit); the bus keeps what comes."""
        up = self.procs[-1]
        up.terminate()
        up.wait(timeout=60)

    def resume(self) -> None:
        """Start ``inferstream up`` on the same bus and store; no warm-up."""
        proc = start_pipeline(self.spec, self.serve)
        self.procs.append(proc)
        self.monitor.watch(self.name, proc.pid)

    def offer(self, tenant: str, rate: float, count: int) -> None:
        sim = ScannerSimulator(self.bus, "scans.raw", self.pool, rate=rate, tenant=tenant,
                               run=new_id(), scanners=SCANNERS)  # fmt: skip
        # The simulator's own emit() catches up in batches of up to 1,000 scans (33 MB in
        # one bus transaction), which under overload holds the embedded bus's write lock
        # long enough to starve the workers; a fleet of scanners sends small batches.
        emission = Emission(started=time.monotonic())
        paced(rate, count, lambda first, end: sim.send_batch(emission, first, end),
              max_batch=OFFER_BATCH)  # fmt: skip

    def settle(self) -> None:
        pass  # the backlog of an overload phase drains while the caller waits for it

    def stop(self) -> None:
        super().stop()
        self.bus.close()


class HttpPipeline(BusPipeline):
    """The flagship fed through its API: ``POST /v1/scans`` with raw DICOM bodies."""

    name = "pipeline-http"
    connections = 32

    def prepare(self) -> None:
        assert self.store is not None
        self.keys: dict[str, list[str]] = {}
        self.accounts = Accounts(self.store)

    def _keys(self, tenant: str) -> list[str]:
        # One key per virtual scanner: the API's rate limit is per caller.
        if tenant not in self.keys:
            self.accounts.create_tenant(tenant)
            self.keys[tenant] = [
                issue_key(self.accounts, tenant, f"scanner-{i}", "device").secret
                for i in range(SCANNERS * 2)
            ]
        return self.keys[tenant]

    def start(self) -> None:
        self.serve = f"127.0.0.1:{free_port()}"
        super().start()

    def _wait_api(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if http_status(f"http://{self.serve}/healthz") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("the pipeline's API did not answer /healthz")

    def offer(self, tenant: str, rate: float, count: int) -> None:
        self.offer_http(tenant, min(rate, 1000.0), count / min(rate, 1000.0))

    def offer_http(self, tenant: str, rate: float | None, seconds: float) -> None:
        self._wait_api()
        keys, tag = self._keys(tenant), new_id()[:4]

        def request(number: int, _created: int) -> tuple[bytes, dict[str, str]]:
            data, _, _ = self.scan(number, tag)
            return data, {"content-type": "application/dicom",
                          "x-api-key": keys[number % len(keys)]}  # fmt: skip

        stats = http_load(f"http://{self.serve}/v1/scans", request, rate=rate,
                          seconds=seconds, connections=self.connections)  # fmt: skip
        if stats.errors:
            print(f"  {self.name}: {stats.errors} failed requests, first: {stats.first_error}")
        self.last_http = stats


class CeleryPeer(System):
    """Celery + Redis, one task per scan, prefork worker with concurrency 2."""

    name = "celery"

    def start(self) -> None:
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.redis.flushdb()
        db = self.workdir / "celery-results.db"
        self.store = ResultsStore(f"sqlite:///{db}")
        argv = [sys.executable, "-m", "celery", "-A", "flagship_peers.celery_app", "worker",
                "--concurrency=2", "--pool=prefork", "--loglevel=WARNING", "--without-gossip",
                "--without-mingle", "--without-heartbeat",
                "-n", f"flagship-{os.getpid()}@%h"]  # fmt: skip
        self._spawn(argv, {"FLAGSHIP_PEER_STORE": f"sqlite:///{db}",
                           "FLAGSHIP_PEER_BROKER": REDIS_URL,
                           # pickle lets the DICOM bytes travel unencoded; Celery refuses
                           # pickle as root unless told (this benchmark sends its own tasks).
                           "C_FORCE_ROOT": "1"})  # fmt: skip
        from flagship_peers import classify_scan

        self.task = classify_scan
        self.warm_up()

    def offer(self, tenant: str, rate: float, count: int) -> None:
        tag = new_id()[:4]

        def send(first: int, end: int) -> None:
            for number in range(first, end):
                data, egg_id, _ = self.scan(number, tag)
                self.task.apply_async(args=(data, f"{tag}-{egg_id}", tenant, now_us()))

        paced(rate, count, send)

    def settle(self) -> None:
        """Drop the queued tasks of an overload phase; wait for the prefetched ones."""
        from flagship_peers import celery_app

        celery_app.control.purge()
        self.redis.delete("celery")
        time.sleep(2.0)

    def stop(self) -> None:
        super().stop()
        self.redis.flushdb()
        self.redis.close()


class FastApiPeer(System):
    """A synchronous FastAPI endpoint under uvicorn with 2 workers."""

    name = "fastapi"
    connections = 64

    def start(self) -> None:
        db = self.workdir / "fastapi-results.db"
        self.store = ResultsStore(f"sqlite:///{db}")
        self.url = f"http://127.0.0.1:{free_port()}/scan"
        port = self.url.rsplit(":", 1)[1].split("/")[0]
        argv = [sys.executable, "-m", "uvicorn", "flagship_peers:api", "--workers", "2",
                "--host", "127.0.0.1", "--port", port, "--log-level", "warning",
                "--no-access-log"]  # fmt: skip
        self._spawn(argv, {"FLAGSHIP_PEER_STORE": f"sqlite:///{db}"})
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                http_status(self.url.replace("/scan", "/docs"))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the FastAPI peer did not start") from None
                time.sleep(0.2)
        self.warm_up()

    def offer(self, tenant: str, rate: float, count: int) -> None:
        self.offer_http(tenant, min(rate, 1000.0), count / min(rate, 1000.0))

    def offer_http(self, tenant: str, rate: float | None, seconds: float,
                   connections: int | None = None) -> None:  # fmt: skip
        tag = new_id()[:4]

        def request(number: int, created: int) -> tuple[bytes, dict[str, str]]:
            data, egg_id, _ = self.scan(number, tag)
            return data, {"content-type": "application/dicom", "x-scan-id": f"{tag}-{egg_id}",
                          "x-tenant": tenant, "x-created-us": str(created)}  # fmt: skip

        stats = http_load(self.url, request, rate=rate, seconds=seconds,
                          connections=connections or self.connections)  # fmt: skip
        self.last_http = stats
        if stats.errors:
            print(f"  {self.name}: {stats.errors} failed requests, first: {stats.first_error}")


def wait_all(system: System, tenant: str, expected: int) -> int:
    assert system.store is not None
    return wait_stored(system.store, tenant, expected)
