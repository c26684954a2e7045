"""Fault test: a producer's clock steps forwards, then backwards, mid-stream; nobody
intervenes. The system clock is never touched: one process runs under Debian's
libfaketime (package ``faketime``), its clock read from a file the test rewrites.

That process is an edge agent (``inferstream edge --bus``) watching a folder: its clock
is true, then an hour ahead, then an hour behind, then true again, and it stamps each
scan's event time as it takes it. Another producer with a true clock sends a scan every
tenth of a second all along. The centre checks what arrives (``check_ingest``) and
gathers each producer's scans in 1-second event-time windows, both producers in one
task, so under one watermark. Counted by id, every scan ends in exactly one place:

- true clock: in its window, the windows being what the scans' times say;
- an hour ahead: refused at ingest, a dead letter naming the skew (not let through to
  drag the watermark an hour ahead and make every other producer's scans late);
- an hour behind: late, in ``events.late`` with the reason (its windows were closed);
- the clock true again: in its windows, with nobody's help.

Retention is unaffected: what the centre appends carries the centre's clock, and the
pipeline's retention, applied now, drops nothing, though the scans appended an hour
"back" have stamps older than it keeps.
"""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from egg_scans import egg_envelopes
from flow_testing import produce_envelopes, wait_for

from inferstream.admit import source_id
from inferstream.bus import Bus, Message, RetentionPolicy, open_bus
from inferstream.dataflow.window import WindowSpec
from inferstream.edge import LOCAL_TENANT
from inferstream.envelope import Envelope, EnvelopeBatch, new_envelope, parse
from inferstream.pipeline import PipelineSpec, StageSpec, StepSpec
from inferstream.runner import apply_retention
from inferstream.testing import pipeline_threads

pytestmark = pytest.mark.slow

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), "")
TENANT = "farm"
HOUR_S = 3600
#: The stepped producer's clock, phase by phase: true, an hour ahead, behind, true.
PHASES = (0, HOUR_S, -HOUR_S, 0)
PER_PHASE = 6
WINDOW_MS = 1000
LATENESS_MS = 8000
#: At most as far ahead as a window may take events out of order (docs/dataflow.md).
MAX_SKEW_S = LATENESS_MS / 1000
STEADY = "scanner/steady"  # the producer with a true clock
EDGE = "folder:inbox"  # the edge agent's scans (its folder source)


def centre(folder: Path) -> PipelineSpec:
    """scans.edge -> check_ingest -> events -> 1 s windows per producer -> windows."""
    window = WindowSpec(
        kind="tumbling", size_ms=WINDOW_MS, lateness_ms=LATENESS_MS, key="source", keep="all"
    )
    ingest = StageSpec(
        name="ingest", input="scans.edge", output="events", steps=(StepSpec("check_ingest"),)
    )
    per_producer = StageSpec(
        name="per-producer", input="events", output="windows", steps=(), window=window,
        idle_ms=500,
    )  # fmt: skip
    return PipelineSpec(
        name="clocks",
        app="eggs",
        stages=(ingest, per_producer),
        topics={"scans.edge": 1, "events": 1, "windows": 1},
        retention={t: RetentionPolicy(max_age_s=1800) for t in ("scans.edge", "events")},
        bus=f"sqlite:///{folder / 'bus.db'}",
        store=f"sqlite:///{folder / 'state.db'}",
        blobs=f"file://{folder / 'blobs'}",
        max_clock_skew_s=MAX_SKEW_S,
    )


class SteppedClock:
    """The clock file libfaketime reads on every call (no cache): an offset in seconds
    from the true time. The monotonic clock stays true, as a real step leaves it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(0)

    def set(self, offset_s: int) -> None:
        hidden = self.path.with_suffix(".part")
        hidden.write_text(f"{offset_s:+d}\n")
        os.replace(hidden, self.path)

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            LD_PRELOAD=LIBFAKETIME,
            FAKETIME_TIMESTAMP_FILE=str(self.path),
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
        )


def clock_of_a_child(clock: SteppedClock) -> float:
    """``time.time()`` in a child process under the stepped clock."""
    done = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        env=clock.env(), capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return float(done.stdout)


@contextmanager
def edge_agent(folder: Path, bus_url: str, clock: SteppedClock) -> Iterator[Path]:
    """``inferstream edge --bus`` under the stepped clock, watching ``folder/inbox``."""
    inbox = folder / "inbox"
    inbox.mkdir()
    argv = [sys.executable, "-m", "inferstream", "edge", "--app", "eggs", "--bus", bus_url,
            "--topic", "scans.edge", "--tenant", TENANT, "--buffer", str(folder / "buffer"),
            "--folder", str(inbox), "--report", "0.5", "--batch", "8"]  # fmt: skip
    with (folder / "edge.log").open("w") as log:
        proc = subprocess.Popen(argv, env=clock.env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield inbox
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (folder / "edge.log").read_text()


class Steady(threading.Thread):
    """The producer with a true clock: one scan every ``every_s`` until stopped."""

    def __init__(self, bus_url: str, scans: Sequence[bytes], every_s: float = 0.1) -> None:
        super().__init__(name="steady-producer")
        self.bus_url, self.scans, self.every_s = bus_url, scans, every_s
        self.sent: dict[str, int] = {}  # id -> event time
        self.halt = threading.Event()

    def run(self) -> None:
        bus = open_bus(self.bus_url)
        try:
            for n, data in enumerate(self.scans):
                if self.halt.wait(self.every_s):
                    return
                env = new_envelope(data, "application/dicom", tenant=TENANT, key=f"k{n}",
                                   source=STEADY)  # fmt: skip
                produce_envelopes(bus, "scans.edge", [env])
                self.sent[env.id] = env.created_at_us
        finally:
            bus.close()


class Reader:
    """Everything a topic holds, read as a group of its own, kept by the test."""

    def __init__(self, bus: Bus, topic: str) -> None:
        self.consumer = bus.consumer(f"test-{topic}", [topic])
        self.messages: list[Message] = []
        self.envelopes: list[Envelope] = []

    def read(self) -> list[Envelope]:
        new = self.consumer.poll_batch(500, 0.1)
        self.messages += new
        self.envelopes += [parse(m.value) for m in new]
        return self.envelopes

    def roots(self) -> set[str]:
        """The ingested items (root ids) the topic holds: a stage's output has an id of
        its own, derived from its input's."""
        return {env.root_id for env in self.read()}

    def close(self) -> None:
        self.consumer.close()


def drop(inbox: Path, phase: int, scans: Sequence[bytes]) -> set[str]:
    """Write ``scans`` into the edge's folder as a scanner does; the ids the agent gives
    them (from the file's name and digest)."""
    ids = set()
    for i, data in enumerate(scans):
        name = f"phase{phase}-{i}.dcm"
        (inbox / f".{name}.part").write_bytes(data)
        os.replace(inbox / f".{name}.part", inbox / name)
        ids.add(source_id(LOCAL_TENANT, name, hashlib.sha256(data).hexdigest()))
    return ids


def windows_by_producer(outputs: Sequence[Envelope]) -> dict[str, dict[int, list[str]]]:
    """producer -> window start -> member ids, from the windows' outputs."""
    found: dict[str, dict[int, list[str]]] = defaultdict(dict)
    for out in outputs:
        batch = EnvelopeBatch()
        batch.ParseFromString(out.payload.inline)
        start = int(out.attributes["window.start_us"])
        assert start not in found[out.attributes["window.key"]], "a window emitted twice"
        assert int(out.attributes["window.count"]) == len(batch.envelopes)
        found[out.attributes["window.key"]][start] = sorted(m.root_id for m in batch.envelopes)
    return found


def by_true_time(times: dict[str, int]) -> dict[int, list[str]]:
    """Window start -> ids, as the scans' event times say."""
    width = WINDOW_MS * 1000
    expected: dict[int, list[str]] = defaultdict(list)
    for ident, t in times.items():
        expected[t - t % width].append(ident)
    return {start: sorted(ids) for start, ids in expected.items()}


def ids_with(letters: Sequence[Envelope], check: Callable[[Envelope], bool]) -> set[str]:
    assert all(check(letter) for letter in letters), [letter.error for letter in letters]
    return {letter.root_id for letter in letters}


def test_a_producers_clock_steps_forwards_then_backwards(tmp_path: Path) -> None:
    assert LIBFAKETIME, "install libfaketime: apt-get install -y faketime (make system-deps)"
    clock = SteppedClock(tmp_path / "clock")
    clock.set(HOUR_S)  # first: does the library really move a child's time.time()?
    assert abs(clock_of_a_child(clock) - time.time() - HOUR_S) < 60
    spec = centre(tmp_path)
    scans = [e.payload.inline for e in egg_envelopes(PER_PHASE * len(PHASES), seed=41)]
    edge_ids: list[set[str]] = []
    bus = open_bus(spec.bus)
    started_ms = int(time.time() * 1000)
    try:
        with pipeline_threads(spec, replicas=1):
            topics = ("scans.edge", "events", "windows", "events.late", "scans.edge.dlq")
            readers = {topic: Reader(bus, topic) for topic in topics}
            arrived = readers["scans.edge"]
            steady = Steady(spec.bus, scans * 20)
            clock.set(0)
            with edge_agent(tmp_path, spec.bus, clock) as inbox:
                steady.start()
                for phase, offset in enumerate(PHASES):
                    clock.set(offset)
                    edge_ids.append(drop(inbox, phase, scans[phase :: len(PHASES)]))
                    assert wait_for(lambda ids=edge_ids[-1]: ids <= arrived.roots(), 60), (
                        f"phase {phase}: the edge's scans did not arrive; its output:\n"
                        + (tmp_path / "edge.log").read_text()[-3000:]
                    )
                steady.halt.set()
                steady.join(timeout=30)
            sent = set(steady.sent) | set().union(*edge_ids)
            # Every scan lands somewhere once the quiet input's watermark passes its window.
            assert wait_for(lambda: _placed(readers) >= sent, 60), _missing(readers, sent, edge_ids)
            time.sleep(1.0)  # anything beyond what is expected would land by now
            times = {env.id: env.created_at_us for env in arrived.read()}
            for reader in readers.values():
                reader.read()
                reader.close()
        dropped = apply_retention(spec)
    finally:
        bus.close()
    ended_ms = int(time.time() * 1000)

    found = windows_by_producer(readers["windows"].envelopes)
    members = [i for per_start in found.values() for ids in per_start.values() for i in ids]
    refused = ids_with(
        readers["scans.edge.dlq"].envelopes,
        lambda d: d.error.stage == "ingest" and d.error.error_type == "ClockSkewError"
        and "ahead of this host's clock" in d.error.message,
    )  # fmt: skip
    late = ids_with(readers["events.late"].envelopes, lambda d: "closed" in d.error.message)
    # By id: 0 lost, 0 doubled (each in one window at most, each in one place).
    assert len(members) == len(set(members))
    assert sorted([*members, *refused, *late]) == sorted(sent)
    # An hour ahead: refused at ingest. An hour behind: late, behind closed windows.
    assert (refused, late) == (edge_ids[1], edge_ids[2])
    # The other producer's windows are what its scans' true times say, the step
    # notwithstanding; the stepped producer's too, before and after its clock was wrong.
    assert found[STEADY] == by_true_time(steady.sent)
    good = edge_ids[0] | edge_ids[3]
    assert found[EDGE] == by_true_time({i: t for i, t in times.items() if i in good})
    assert set(found) == {STEADY, EDGE}
    # Retention: what the centre appends carries its clock, and nothing is dropped now,
    # though the scans sent an hour "back" were appended with stamps older than it keeps.
    centre_stamps = [m.timestamp_ms for t in topics[1:] for m in readers[t].messages]
    assert all(started_ms <= stamp <= ended_ms for stamp in centre_stamps)
    assert min(m.timestamp_ms for m in arrived.messages) < started_ms - 1800 * 1000
    assert dropped == 0


def _placed(readers: dict[str, Reader]) -> set[str]:
    """Ids in a window, refused or late, so far."""
    members = set()
    for out in readers["windows"].read():
        batch = EnvelopeBatch()
        batch.ParseFromString(out.payload.inline)
        members |= {m.root_id for m in batch.envelopes}
    return members | readers["events.late"].roots() | readers["scans.edge.dlq"].roots()


def _missing(readers: dict[str, Reader], sent: set[str], edge_ids: list[set[str]]) -> str:
    missing = sent - _placed(readers)
    per_phase = [len(missing & ids) for ids in edge_ids]
    counts = {topic: len(reader.read()) for topic, reader in readers.items()}
    return f"{len(missing)} not placed, of the edge's by phase {per_phase}; topics {counts}"
