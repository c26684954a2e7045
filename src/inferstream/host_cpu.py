"""How much CPU the machine had during a run: its busy and stolen shares (``/proc/stat``).

A latency measured on a virtual machine depends on what the host gives it: when other
machines on the host compete, the hypervisor holds this one's CPUs back (*steal time*)
and every queue in the pipeline waits longer. :class:`HostCpu` reads the kernel's
counters at the start of a run and reports the shares over it, so a summary can say
when its figures are of a machine that was not quiet. Off Linux there are no such
counters and :meth:`HostCpu.shares` returns None.

Not every counter only grows: the kernel documents that ``iowait`` can go down (it is
counted per CPU and a task waiting on I/O may wake on another), and the aggregate
``idle`` can step back when a CPU leaves its idle state. A counter that went down over
the run counts as zero time, so the shares stay fractions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuShares:
    """Shares of all CPUs' time over a run, from 0 to 1."""

    #: Spent working: user (nice included), system, interrupts.
    busy: float
    #: Taken by the hypervisor for other virtual machines while this one had work.
    steal: float


def _counters(path: Path) -> tuple[int, ...] | None:
    """The aggregate ``cpu`` line: user nice system idle iowait irq softirq steal."""
    try:
        first = path.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 9:
        return None
    return tuple(int(field) for field in first[1:9])


class HostCpu:
    """Counters read now; :meth:`shares` gives the shares since."""

    def __init__(self, path: Path = PROC_STAT) -> None:
        self._path = path
        self._start = _counters(path)

    def shares(self) -> CpuShares | None:
        end = _counters(self._path)
        if self._start is None or end is None:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (
            max(b - a, 0) for a, b in zip(self._start, end, strict=True)
        )
        total = user + nice + system + idle + iowait + irq + softirq + steal
        if total <= 0:
            return None
        return CpuShares(busy=(user + nice + system + irq + softirq) / total, steal=steal / total)


__all__ = ["CpuShares", "HostCpu"]
