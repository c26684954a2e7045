"""The edge agent: beside a scanner, every scan kept locally until the centre has it.

``inferstream edge`` runs, on the scanner's machine:

- the sources: a watched folder (:mod:`inferstream.folder_source`) and/or a DICOM
  receiver (:mod:`inferstream.dicom_receiver`), checking each scan with the
  application's own checks, so a bad scan is refused at the scanner, at once;
- a **local durable buffer**: the embedded log in ``--buffer`` (topic
  ``edge.outbox``). A scan is in it, durably, before its source says "done" (the file
  moves to ``done/``, the scanner gets its success status);
- a **forwarder**: reads the buffer in batches and sends each as an
  ``EnvelopeBatch`` to the central API (``POST /v1/scans``, protobuf, the device's API
  key), which checks it again as it checks any upload. Its read position moves only
  after the centre's 202, so nothing is lost when the uplink is down, the centre
  restarts or the agent itself is killed: it sends again from where it was. What it
  sends again has the ids it had (derived from the file or the SOP Instance UID), and
  the centre's pipeline makes a re-sent id a rewrite of the same record, never a
  second one;
- retries with back-off (0.5 s doubling to 30 s) on a network error, 429 and 5xx;
  a batch the centre refuses (4xx) is split until the refused scans are found, and
  those go to ``edge.rejected`` with the centre's reason (they would never pass);
- a report of its backlog (scans in the buffer not yet accepted by the centre),
  forwarded and rejected, every ``--report`` seconds.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from inferstream.admit import Admitter
from inferstream.application import AppSpec
from inferstream.bus import Bus, Consumer, Message, Record, open_bus
from inferstream.dicom_receiver import DicomReceiver, ReceiverSettings
from inferstream.envelope import Envelope, EnvelopeBatch, parse
from inferstream.errors import FencedError, InferstreamError
from inferstream.folder_source import FolderSource, watch

log = logging.getLogger(__name__)

OUTBOX, REJECTED = "edge.outbox", "edge.rejected"
GROUP = "edge-forwarder"
#: Back-off between tries of one batch, seconds.
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: Answers on which a batch is sent again later, not refused.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The agent's own name for the tenant its buffer holds (the centre sets the real one
#: from the API key).
LOCAL_TENANT = "edge"


@dataclass(frozen=True)
class EdgeSettings:
    buffer: Path
    #: The central API's base URL, e.g. https://inferstream.example:8000 ("" with ``bus``)
    api: str
    api_key: str
    folder: Path | None = None
    dicom: ReceiverSettings | None = None
    batch: int = 64
    report_s: float = 10.0
    timeout_s: float = 30.0
    #: De-identifies each DICOM file before it is buffered (``--deidentify``).
    deidentify: Callable[[bytes], bytes] | None = None
    #: Instead of the API: the central bus (``kafka://...``), its topic, and the tenant
    #: the scans are for; a ``check_ingest`` stage there checks them as the API would.
    bus: str | None = None
    topic: str = "scans.edge"
    tenant: str = ""


@dataclass
class Forwarded:
    forwarded: int = 0
    rejected: int = 0
    retries: int = 0


class _Stopped(Exception):
    """The agent is stopping with a batch not accepted: it stays in the buffer."""


def open_buffer(buffer: Path) -> Bus:
    """The agent's buffer. Its one forwarder is taken over within 2 s when the agent
    restarts after a crash, and is never replaced for not polling while it waits out a
    long outage inside one batch."""
    buffer.mkdir(parents=True, exist_ok=True)
    bus = open_bus(
        f"sqlite:///{buffer / 'edge.db'}?session_timeout_s=2&max_poll_interval_s=31536000"
    )
    bus.create_topic(OUTBOX, 1)  # one partition: scans leave in the order they came
    bus.create_topic(REJECTED, 1)
    return bus


class Forwarder:
    """Sends the buffer to the central API; moves on only when the centre has it.

    ``bus`` is its own handle on the buffer (a bus handle serves one thread);
    :meth:`backlog` may be asked from another thread with ``watcher``, another one."""

    def __init__(
        self, bus: Bus, settings: EdgeSettings, app: AppSpec, watcher: Bus,
        uplink: Uplink | None = None,
    ) -> None:  # fmt: skip
        self.bus, self.settings, self.app, self.watcher = bus, settings, app, watcher
        self.counts = Forwarded()
        self.url = settings.api.rstrip("/") + "/v1/scans"
        self.uplink: Uplink = uplink or self._post

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            consumer = self.bus.consumer(GROUP, [OUTBOX])
            try:
                self._drain(consumer, stop)
            except FencedError:  # replaced meanwhile: join again; what was sent is resent
                log.warning("the forwarder lost its place in the buffer; joining again")
            except _Stopped:
                return
            finally:
                consumer.close()

    def _drain(self, consumer: Consumer, stop: threading.Event) -> None:
        while not stop.is_set():
            messages = consumer.poll_batch(self.settings.batch, 0.5)
            if messages:
                self._forward(messages, stop)
                consumer.commit(messages)

    def backlog(self) -> int:
        """Scans in the buffer the centre has not accepted yet."""
        return sum(p.lag for p in self.watcher.partitions(OUTBOX, GROUP))

    def _forward(self, messages: Sequence[Message], stop: threading.Event) -> None:
        envelopes = [parse(m.value) for m in messages]
        refused = self._send(envelopes, stop)
        if refused:
            self.bus.produce(REJECTED, [_rejected(env, why) for env, why in refused])
            self.counts.rejected += len(refused)
        self.counts.forwarded += len(envelopes) - len(refused)

    def _send(self, envelopes: list[Envelope], stop: threading.Event) -> list[tuple[Envelope, str]]:
        """Send until accepted; the scans the centre refuses for good, with why."""
        tries = 0
        while True:
            status, detail, retry_after_s = self.uplink(envelopes)
            if status == 202:
                return []
            if status is None or status in RETRY_STATUSES or status in (401, 403):
                if status in (401, 403):
                    log.error("the centre refuses our API key (%s): %s; fix the key, the "
                              "scans wait in the buffer", status, detail)  # fmt: skip
                else:
                    log.warning("cannot forward now (%s); trying again", detail)
                self.counts.retries += 1
                backoff = BACKOFF_S[min(tries, len(BACKOFF_S) - 1)]
                if stop.wait(backoff if retry_after_s is None else retry_after_s):
                    raise _Stopped
                tries += 1
                continue
            if len(envelopes) == 1:  # refused for good: it would never pass
                log.warning("the centre refused scan %s: %s", envelopes[0].id, detail)
                return [(envelopes[0], f"{status}: {detail}")]
            half = len(envelopes) // 2  # find the ones it refuses
            return self._send(envelopes[:half], stop) + self._send(envelopes[half:], stop)

    def _post(self, envelopes: list[Envelope]) -> Answer:
        batch = EnvelopeBatch(envelopes=[wire(env, self.app) for env in envelopes])
        request = urllib.request.Request(
            self.url,
            data=batch.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf", "X-API-Key": self.settings.api_key},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as answer:
                return Answer(int(answer.status), "accepted")
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, _detail(exc), _retry_after(exc))
        except (urllib.error.URLError, OSError) as exc:
            return Answer(None, str(getattr(exc, "reason", exc)))


def wire(env: Envelope, app: AppSpec, tenant: str = "") -> Envelope:
    """What the centre takes from an edge agent: the scan inline and what a client may
    say of it; everything else it derives again from the scan."""
    allowed = set(app.client_attributes)
    out = Envelope(
        schema_version=env.schema_version, id=env.id, root_id=env.root_id,
        partition_key=env.partition_key, source=env.source,
        created_at_us=env.created_at_us, trace_id=env.trace_id, tenant=tenant,
    )  # fmt: skip
    out.payload.content_type = env.payload.content_type
    out.payload.inline = env.payload.inline
    out.attributes.update({k: v for k, v in env.attributes.items() if k in allowed})
    return out


class Answer(NamedTuple):
    """The centre's answer to a batch: 202 accepted; a 4xx other than those in
    :data:`RETRY_STATUSES`, refused for good; None (unreachable) or a retry status, to
    try again, after ``retry_after_s`` when the centre said (a 429 or 503's
    Retry-After), else after the agent's own back-off."""

    status: int | None
    detail: str
    retry_after_s: float | None = None


#: Hands a batch to the centre and says what it answered.
Uplink = Callable[[list[Envelope]], Answer]


class BusUplink:
    """The central bus as the uplink: a batch is the centre's once the bus has it
    durably (its produce returns); any failure is tried again, as an outage is."""

    def __init__(self, url: str, topic: str, tenant: str, app: AppSpec) -> None:
        self.bus, self.topic, self.tenant, self.app = open_bus(url), topic, tenant, app

    def __call__(self, envelopes: list[Envelope]) -> Answer:
        wired = [wire(env, self.app, self.tenant) for env in envelopes]
        records = [Record(e.partition_key.encode(), e.SerializeToString()) for e in wired]
        try:
            self.bus.produce(self.topic, records)
        except InferstreamError as exc:  # the bus's errors: down, unreachable, timed out
            return Answer(None, str(exc))
        return Answer(202, "accepted")

    def close(self) -> None:
        self.bus.close()


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    """The seconds a 429 or 503 asks us to wait (at most the longest back-off)."""
    said = exc.headers.get("Retry-After", "") if exc.headers else ""
    if not said.isdigit():
        return None  # absent, or an HTTP date: our own back-off then
    return min(float(said), BACKOFF_S[-1])


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        return exc.reason or ""
    return str(body.get("detail") or body.get("error") or exc.reason)


def _rejected(env: Envelope, why: str) -> Record:
    env.error.stage, env.error.error_type = GROUP, "RefusedByCentre"
    env.error.message = why[:2000]
    return Record(env.partition_key.encode(), env.SerializeToString())


def _bus_uplink(settings: EdgeSettings, app: AppSpec) -> BusUplink | None:
    if settings.bus is None:
        return None
    if not settings.tenant:
        raise InferstreamError("an edge agent writing to the bus must say its --tenant")
    return BusUplink(settings.bus, settings.topic, settings.tenant, app)


def run_edge(
    settings: EdgeSettings, app: AppSpec, stop: threading.Event, say: Callable[[str], None] = print
) -> None:
    """The agent until ``stop``: its sources, the forwarder, a report every so often."""
    if settings.folder is None and settings.dicom is None:
        raise InferstreamError("the edge agent needs a source: --folder and/or --dicom-port")
    # A handle on the buffer each: the sources' (their admitter serialises them), the
    # forwarder's and the report's.
    buses = [open_buffer(settings.buffer) for _ in range(3)]
    admitter = Admitter(buses[0], None, topic=OUTBOX, tenant=LOCAL_TENANT, app=app,
                        claim_check_bytes=2**62, deidentify=settings.deidentify)  # fmt: skip
    uplink = _bus_uplink(settings, app)
    forwarder = Forwarder(buses[1], settings, app, watcher=buses[2], uplink=uplink)
    threads = [threading.Thread(target=forwarder.run, args=(stop,), name="forward")]
    receiver = None
    if settings.folder is not None:
        source = FolderSource(settings.folder, admitter)
        threads.append(threading.Thread(
            target=watch, kwargs={"source": source, "interval_s": 0.5, "stop": stop, "say": say},
            name="folder",
        ))  # fmt: skip
    if settings.dicom is not None:
        receiver = DicomReceiver(admitter, settings.dicom)
        receiver.start()
        say(f"DICOM receiver {settings.dicom.ae_title} on port {receiver.port}")
    for thread in threads:
        thread.start()
    centre = f"{settings.bus} topic {settings.topic}" if settings.bus else settings.api
    say(f"edge agent: buffer {settings.buffer}, forwarding to {centre}")
    try:
        while not stop.wait(settings.report_s):
            c = forwarder.counts
            say(f"backlog {forwarder.backlog()} scans | forwarded {c.forwarded} | rejected "
                f"{c.rejected} | retries {c.retries}")  # fmt: skip
    finally:
        stop.set()
        if receiver is not None:
            receiver.stop()
        for thread in threads:
            thread.join(timeout=60)
        for bus in buses:
            bus.close()
        if uplink is not None:
            uplink.close()


__all__ = [
    "OUTBOX",
    "REJECTED",
    "Answer",
    "BusUplink",
    "EdgeSettings",
    "Forwarder",
    "open_buffer",
    "run_edge",
    "wire",
]
