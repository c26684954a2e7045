"""The machine's busy and stolen CPU shares over a run, from the kernel's counters."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from inferstream.host_cpu import HostCpu


def _stat(
    path: Path, *, user: int, nice: int, system: int, idle: int, steal: int, iowait: int = 10
) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice, then per-CPU lines
    path.write_text(
        f"cpu  {user} {nice} {system} {idle} {iowait} 0 5 {steal} 0 0\n"
        "cpu0 1 2 3 4 5 6 7 8 0 0\nintr 12345\n"
    )


def test_the_shares_are_of_the_time_between_start_and_now(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _stat(stat, user=1000, nice=2000, system=300, idle=5000, steal=100)
    host = HostCpu(stat)
    # Over the run: 100 user, 500 nice (the workers), 100 system, 200 idle, 100 steal;
    # iowait and softirq did not move: 1,000 ticks in all.
    _stat(stat, user=1100, nice=2500, system=400, idle=5200, steal=200)
    shares = host.shares()
    assert shares is not None
    assert shares.busy == pytest.approx(0.7)
    assert shares.steal == pytest.approx(0.1)


def test_no_counters_no_shares(tmp_path: Path) -> None:
    assert HostCpu(tmp_path / "missing").shares() is None
    odd = tmp_path / "stat"
    odd.write_text("not the kernel's format\n")
    assert HostCpu(odd).shares() is None
    _stat(odd, user=1, nice=1, system=1, idle=1, steal=0)
    host = HostCpu(odd)
    assert host.shares() is None  # no time passed: nothing to divide


def test_a_counter_that_went_down_counts_no_time(tmp_path: Path) -> None:
    # The kernel's iowait can go down between two readings (it is kept per CPU);
    # taken as negative time it made the total smaller than the busy time.
    stat = tmp_path / "stat"
    _stat(stat, user=1000, nice=0, system=0, idle=5000, steal=0, iowait=900)
    host = HostCpu(stat)
    _stat(stat, user=1090, nice=0, system=0, idle=5010, steal=0, iowait=850)
    shares = host.shares()
    assert shares is not None
    assert shares.busy == pytest.approx(0.9)
    assert shares.steal == 0


def test_on_this_machine_the_shares_are_fractions() -> None:
    host = HostCpu()
    # Work until the kernel's counters (in ticks of 10 ms) have moved, however
    # fast this machine is: a reading with no time between gives no shares.
    deadline = time.monotonic() + 5
    shares = None
    while shares is None and time.monotonic() < deadline:
        sum(i * i for i in range(200_000))
        shares = host.shares()
    if Path("/proc/stat").is_file():
        assert shares is not None
        assert 0 <= shares.steal <= shares.steal + shares.busy <= 1
