"""Virtual MRI scanners: emit egg scans into the ingest topic at a target rate.

Scans are rendered and DICOM-encoded once, up front, into a :class:`ScanPool`
(encoding is the scanner's cost, not the pipeline's). Each emission stamps a new
egg id and tray into the pool's DICOM bytes (fixed-width placeholders, so the bytes
stay valid DICOM) and sends it straight to the bus, as an edge agent does. The
ground truth of every emitted scan is kept aside, keyed by envelope id, for scoring.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inferstream.apps.eggs.dicomgen import to_dicom_bytes
from inferstream.apps.eggs.phantom import (
    DEFAULT_DIFFICULTY,
    EGGS_PER_TRAY,
    make_specs,
    render_batch,
)
from inferstream.bus import Bus, Record
from inferstream.envelope import Envelope, new_envelope
from inferstream.errors import BusError, ConfigError, InferstreamError

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
    """Pre-encoded scans with placeholder ids, cycled through by the emitter.

    Scans are grouped by the scanner hardware that recorded them (its gain and
    protocol), so virtual scanner ``v`` always sends scans of one hardware profile.
    """

    scans: list[PoolScan]
    by_scanner: dict[str, list[PoolScan]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for scan in self.scans:
            self.by_scanner.setdefault(scan.scanner, []).append(scan)

    def pick(self, number: int, scanners: int) -> tuple[PoolScan, str]:
        """Scan of emission ``number`` and the name of the virtual scanner sending it."""
        virtual = number % scanners
        hardware = sorted(self.by_scanner)
        group = self.by_scanner[hardware[virtual % len(hardware)]]
        return group[(number // scanners) % len(group)], f"SCANNER-{virtual + 1:02d}"

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


class SendingStopped(InferstreamError):
    """The bus refused a batch, so the scanners stopped; ``emission`` is what it accepted."""

    def __init__(self, emission: Emission, cause: BusError) -> None:
        super().__init__(f"the scanners stopped after {len(emission.truth)} scans: {cause}")
        self.emission = emission
        self.cause = cause


def stamp(scan: PoolScan, number: int, run: str, scanner: str) -> tuple[bytes, str, str]:
    """The pool scan's DICOM with egg id, tray and scanner of emission ``number`` filled in.

    Every stamped value has the width of the one it replaces, so lengths stay valid.
    """
    egg_id = f"EGG-{run}{number:08d}"[: len(EGG_PLACEHOLDER)].ljust(len(EGG_PLACEHOLDER), "0")
    tray = f"TRAY-{number // EGGS_PER_TRAY:08d}"
    values = (egg_id.encode(), tray.encode(), scanner.encode())
    data = memoryview(scan.dicom)  # slices of it are not copies; the join copies once
    parts: list[bytes | memoryview] = []
    at = 0
    for start, end, which in _slots(scan):
        if len(values[which]) != end - start:  # a DICOM element's length would be wrong
            raise ConfigError(
                f"cannot stamp {values[which].decode()!r} over "
                f"{scan.dicom[start:end].decode()!r} in a pool scan: the two must be as long; "
                "use scanner names of the pool's width (SCANNER-01..99) and fewer than 10^8 trays"
            )
        parts += (data[at:start], values[which])
        at = end
    parts.append(data[at:])
    return b"".join(parts), egg_id, tray


def _stamped(scan: PoolScan) -> tuple[bytes, bytes, bytes]:
    """What :func:`stamp` replaces in a pool scan, in the order of its values."""
    return EGG_PLACEHOLDER.encode(), TRAY_PLACEHOLDER.encode(), scan.scanner.encode()


@functools.lru_cache(maxsize=4096)
def _slots(scan: PoolScan) -> tuple[tuple[int, int, int], ...]:
    """Where in the scan's bytes each occurrence of a stamped value lies, in order:
    (start, end, which value). Found once per pool scan, so stamping an emission copies
    the scan once instead of searching it three times."""
    found = []
    for which, old in enumerate(_stamped(scan)):
        at = scan.dicom.find(old)
        while at >= 0:
            found.append((at, at + len(old), which))
            at = scan.dicom.find(old, at + len(old))
    found.sort()
    if any(a[1] > b[0] for a, b in itertools.pairwise(found)):
        raise ConfigError("the stamped values overlap in a pool scan; a bug in the pool")
    return tuple(found)


class ScannerSimulator:
    """``scanners`` virtual scanners sending ``rate`` scans/s in total to ``topic``."""

    def __init__(
        self,
        bus: Bus,
        topic: str,
        pool: ScanPool,
        *,
        rate: float,
        tenant: str,
        run: str,
        scanners: int = 8,
    ) -> None:
        if rate <= 0:
            raise ConfigError(f"rate must be a positive number of scans per second, got {rate}")
        if not 1 <= scanners <= 99:
            raise ConfigError(f"scanners must be 1..99, got {scanners}")
        self.scanners = scanners
        self.bus = bus
        self.topic = topic
        self.pool = pool
        self.rate = rate
        self.tenant = tenant
        self.run_tag = run[:4]

    def emit(self, total: int, progress: Callable[[Emission], None] | None = None) -> Emission:
        """Send ``total`` scans paced at the target rate; return the ground truth.

        A scanner has nobody to wait for it, so the first batch the bus refuses stops
        the sending: :class:`SendingStopped` carries the truth of what was accepted.
        """
        out = Emission(started=time.monotonic())
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - out.started) * self.rate) + 1)
            if due > sent:
                try:
                    self.send_batch(out, sent, min(due, sent + 1000))
                except BusError as exc:
                    out.finished = time.monotonic()
                    raise SendingStopped(out, exc) from exc
                sent = min(due, sent + 1000)
                if progress:
                    progress(out)
            time.sleep(TICK_S)
        out.finished = time.monotonic()
        return out

    def send_batch(self, out: Emission, first: int, end: int) -> None:
        """Send emissions ``first`` to ``end`` in one bus write (benchmarks pace these).

        ``out`` gains their truth only once the bus has accepted them, so after a
        refused write it still counts exactly the scans the bus holds.
        """
        batch = [self._scan(number) for number in range(first, end)]
        self.bus.produce(self.topic, [record for record, _, _ in batch])
        for _, env, label in batch:
            out.truth[env.id] = label
            out.created_us[env.id] = env.created_at_us

    def _scan(self, number: int) -> tuple[Record, Envelope, str]:
        """Emission ``number``: its bus record, its envelope and its true label."""
        scan, scanner = self.pool.pick(number, self.scanners)
        data, egg_id, tray = stamp(scan, number, self.run_tag, scanner)
        env = new_envelope(
            data,
            "application/dicom",
            tenant=self.tenant,
            key=egg_id,
            source=f"scanner/{scanner}",
            attributes={"egg_id": egg_id, "tray": tray, "scanner": scanner},
        )
        return Record(key=egg_id.encode(), value=env.SerializeToString()), env, scan.label
