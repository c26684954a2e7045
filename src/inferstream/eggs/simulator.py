"""Virtual MRI scanners: emit egg scans into the ingest topic at a target rate.

Scans are rendered and DICOM-encoded once, up front, into a :class:`ScanPool`
(encoding is the scanner's cost, not the pipeline's). Each emission stamps a new
egg id and tray into the pool's DICOM bytes (fixed-width placeholders, so the bytes
stay valid DICOM) and sends it straight to the bus, as an edge agent does. The
ground truth of every emitted scan is kept aside, keyed by envelope id, for scoring.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inferstream.bus import Bus, Record
from inferstream.eggs.dicomgen import to_dicom_bytes
from inferstream.eggs.phantom import DEFAULT_DIFFICULTY, EGGS_PER_TRAY, make_specs, render_batch
from inferstream.envelope import new_envelope

EGG_PLACEHOLDER = "EGG-############"
TRAY_PLACEHOLDER = "TRAY-########"
#: How often the emitter wakes up to send what is due.
TICK_S = 0.005


@dataclass(frozen=True)
class PoolScan:
    dicom: bytes
    label: str
    scanner: str


@dataclass
class ScanPool:
    """Pre-encoded scans with placeholder ids, cycled through by the emitter."""

    scans: list[PoolScan]

    @classmethod
    def build(
        cls,
        size: int,
        seed: int = 7,
        difficulty: float = DEFAULT_DIFFICULTY,
        progress: Callable[[int, int], None] | None = None,
    ) -> ScanPool:
        scans: list[PoolScan] = []
        for start in range(0, size, 128):
            specs = make_specs(min(128, size - start), seed, difficulty, start=start)
            specs = [
                dataclasses.replace(s, egg_id=EGG_PLACEHOLDER, tray=TRAY_PLACEHOLDER) for s in specs
            ]
            for spec, image in zip(specs, render_batch(specs), strict=True):
                scans.append(PoolScan(to_dicom_bytes(image, spec), spec.label, spec.scanner))
            if progress:
                progress(len(scans), size)
        return cls(scans)


@dataclass
class Emission:
    """What the simulator sent: ground truth and creation time per envelope id."""

    truth: dict[str, str] = field(default_factory=dict)
    created_us: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0


def stamp(scan: PoolScan, number: int, run: str) -> tuple[bytes, str, str]:
    """The pool scan's DICOM with egg id and tray of emission ``number`` filled in."""
    egg_id = f"EGG-{run}{number:08d}"[: len(EGG_PLACEHOLDER)].ljust(len(EGG_PLACEHOLDER), "0")
    tray = f"TRAY-{number // EGGS_PER_TRAY:08d}"
    data = scan.dicom.replace(EGG_PLACEHOLDER.encode(), egg_id.encode())
    return data.replace(TRAY_PLACEHOLDER.encode(), tray.encode()), egg_id, tray


class ScannerSimulator:
    """``scanners`` virtual scanners sending ``rate`` scans/s in total to ``topic``."""

    def __init__(
        self, bus: Bus, topic: str, pool: ScanPool, *, rate: float, tenant: str, run: str
    ) -> None:
        self.bus = bus
        self.topic = topic
        self.pool = pool
        self.rate = rate
        self.tenant = tenant
        self.run_tag = run[:4]

    def emit(self, total: int, progress: Callable[[Emission], None] | None = None) -> Emission:
        """Send ``total`` scans paced at the target rate; return the ground truth."""
        out = Emission(started=time.monotonic())
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - out.started) * self.rate) + 1)
            if due > sent:
                self._send_batch(out, sent, min(due, sent + 1000))
                sent = min(due, sent + 1000)
                if progress:
                    progress(out)
            time.sleep(TICK_S)
        out.finished = time.monotonic()
        return out

    def _send_batch(self, out: Emission, first: int, end: int) -> None:
        records = []
        for number in range(first, end):
            scan = self.pool.scans[number % len(self.pool.scans)]
            data, egg_id, tray = stamp(scan, number, self.run_tag)
            env = new_envelope(
                data,
                "application/dicom",
                tenant=self.tenant,
                key=egg_id,
                source=f"scanner/{scan.scanner}",
                attributes={"egg_id": egg_id, "tray": tray, "scanner": scan.scanner},
            )
            out.truth[env.id] = scan.label
            out.created_us[env.id] = env.created_at_us
            records.append(Record(key=egg_id.encode(), value=env.SerializeToString()))
        self.bus.produce(self.topic, records)
