"""Property tests of the embedded bus: any interleaving of produce, poll, commit, kill and
rebalance delivers every message at least once and commits each result exactly once.

:class:`BusMachine` runs one topic of three partitions and one group of one to three live
members. It produces keyed and keyless messages with unique ids; polls on a member, which
holds what it got until it commits (it may poll again first); processes and commits,
writing each held message's result to an idempotent sink first (a commit refused with
:class:`~inferstream.errors.FencedError` drops the batch, which the new owner redoes); and
rebalances: a member joins, visits (joins, does one batch and leaves), leaves without
committing (a worker stopped mid-batch) or crashes (``kill -9``: abandoned unclosed, its
heartbeats stop after ``max_poll_interval_s`` and its partitions move when its session
expires, both made short in the bus URL), or every member stalls past its session. After
every step the group's committed offsets must be exactly what the successful commits
covered (never moved back, nothing stored for a refused partition), and no poll may hand
out a message a successful commit covered; a final drain must leave every message
delivered, its result in the sink exactly once and every partition committed to its end.
Member ids are random, so which member owns which partition differs from run to run and a
failure may be reported as flaky; its first error is the one to read. Kafka is not
modelled: each group join on the test broker takes seconds, so a few hundred interleavings
would take hours; the conformance suite runs the same delivery, commit and fencing
contract on both buses, and the fault tests kill -9 real workers on each.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import Phase, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from inferstream.bus import Bus, Consumer, Message, Record, TopicPartition, open_bus
from inferstream.errors import FencedError

TOPIC = "jobs"
GROUP = "workers"
PARTITIONS = 3
MAX_LIVE = 3
#: Live and crashed members at once, bounding an example's threads and connections.
MAX_OPEN = 6
SESSION_TIMEOUT_S = 0.1
MAX_POLL_INTERVAL_S = 0.03
#: Long enough for every member's heartbeats to stop and its session to expire.
STALL_S = MAX_POLL_INTERVAL_S + SESSION_TIMEOUT_S + 0.05
DRAIN_DEADLINE_S = 10.0
KEYS = (None, b"a", b"b", b"c", b"d", b"e")
PICKS = st.integers(0, MAX_LIVE - 1)
BATCHES = st.lists(st.sampled_from(KEYS), min_size=1, max_size=12)
REFUSED = re.compile(rf"{TOPIC}\[(\d+)\]")


def result_of(message: Message) -> bytes:
    """The result of processing ``message``: made from all of it, so a redelivery that
    differed in any way would write a different result."""
    return b"%d|%s|%s" % (message.partition, message.key or b"-", message.value)


@dataclass
class ResultsSink:
    """An idempotent results store: a result is keyed by its message id (the value)."""

    results: dict[bytes, bytes] = field(default_factory=dict)
    #: How many writes changed the stored result of each id.
    new_writes: Counter[bytes] = field(default_factory=Counter)

    def write(self, message: Message) -> None:
        result = result_of(message)
        if self.results.get(message.value) != result:
            self.results[message.value] = result
            self.new_writes[message.value] += 1


@dataclass
class Member:
    name: str
    consumer: Consumer
    #: Polled and not yet committed.
    held: list[Message] = field(default_factory=list)


@dataclass(frozen=True)
class Delivery:
    member: str
    message: Message


def refused_partitions(error: FencedError) -> set[int]:
    """The partitions a refused commit names (the error carries them only in its text);
    the others of its batch were committed, which the offsets invariant then checks."""
    return {int(number) for number in REFUSED.findall(str(error))}


class BusMachine(RuleBasedStateMachine):
    """One group on a fresh bus file, and the record of what its members did."""

    def __init__(self) -> None:
        super().__init__()
        self.resources = ExitStack()
        folder = self.resources.enter_context(tempfile.TemporaryDirectory())
        self.bus: Bus = open_bus(
            f"sqlite:///{Path(folder) / 'bus.db'}?session_timeout_s={SESSION_TIMEOUT_S}"
            f"&max_poll_interval_s={MAX_POLL_INTERVAL_S}"
        )
        self.resources.callback(self.bus.close)
        self.bus.create_topic(TOPIC, PARTITIONS)
        self.live: list[Member] = []
        self.crashed: list[Member] = []
        self.created = 0
        self.stalled = False
        self.produced: set[bytes] = set()
        self.deliveries: list[Delivery] = []
        self.sink = ResultsSink()
        #: Per partition, the end of the furthest commit that succeeded.
        self.covered: dict[int, int] = {}
        #: Messages offered for commit after another member's commit had covered them.
        self.stale_offered = 0

    @initialize(members=st.integers(1, MAX_LIVE), keys=BATCHES)
    def start(self, members: int, keys: list[bytes | None]) -> None:
        self.produce(keys)
        for _ in range(members):
            self.join()

    @precondition(lambda self: len(self.live) < MAX_LIVE and self._may_open())
    @rule()
    def join(self) -> None:
        self.live.append(self._new_member())

    @rule(keys=BATCHES)
    def produce(self, keys: list[bytes | None]) -> None:
        first = len(self.produced)
        records = [Record(key, b"m%04d" % (first + i)) for i, key in enumerate(keys)]
        self.bus.produce(TOPIC, records)
        self.produced.update(record.value for record in records)

    @precondition(lambda self: self.live)
    @rule(pick=PICKS, max_records=st.integers(1, 8), then_commit=st.booleans())
    def poll(self, pick: int, max_records: int, then_commit: bool) -> None:
        """Poll on a member, which holds the batch; with ``then_commit`` it then processes
        and commits everything it holds (a worker's loop), else it polls again first."""
        member = self.live[pick % len(self.live)]
        self._poll(member, max_records, 0.0)
        if then_commit:
            self._process_and_commit(member)

    @precondition(lambda self: self.live)
    @rule(pick=PICKS)
    def process_and_commit(self, pick: int) -> None:
        """Commit without polling first: a member that has not seen a rebalance yet."""
        self._process_and_commit(self.live[pick % len(self.live)])

    @precondition(lambda self: self._may_open())
    @rule(max_records=st.integers(1, 8))
    def visit(self, max_records: int) -> None:
        """A short-lived member (a worker that starts, does one batch and stops): the
        partitions it takes go back to their owners, now committed further."""
        visitor = self._new_member()
        self._poll(visitor, max_records, 0.0)
        self._process_and_commit(visitor)
        visitor.consumer.close()

    @precondition(lambda self: self.live)
    @rule(pick=PICKS, crash=st.booleans())
    def kill(self, pick: int, crash: bool) -> None:
        """Stop a member with its batch uncommitted. It leaves the group (a worker stopped
        mid-batch), or with ``crash`` is never heard from again (kill -9; it is closed
        only at teardown) and its partitions move when its session expires."""
        member = self.live.pop(pick % len(self.live))
        if crash:
            self.crashed.append(member)
        else:
            member.consumer.close()

    @precondition(lambda self: self.live and not self.stalled)
    @rule()
    def stall(self) -> None:
        """Every member stops polling past its session (once per example: it costs time)."""
        self.stalled = True
        time.sleep(STALL_S)

    @invariant()
    def committed_offsets_are_those_of_successful_commits(self) -> None:
        committed = {p.partition: p.committed or 0 for p in self.bus.partitions(TOPIC, GROUP)}
        covered = {p: self.covered.get(p, 0) for p in range(PARTITIONS)}
        assert committed == covered, "committed offsets (left) != what commits covered (right)"

    def teardown(self) -> None:
        # Steers the search to members holding messages someone else has committed since,
        # where fencing has work to do: with it, 3 runs in 8 found the stale-batch bug
        # fixed beside these tests (then 4 in 8 with longer runs); without it, 1 in 8.
        target(float(self.stale_offered), label="stale messages offered for commit")
        try:
            self._drain()
            self._check_everything_done_once()
        finally:
            self.resources.close()

    def _may_open(self) -> bool:
        return len(self.live) + len(self.crashed) < MAX_OPEN

    def _new_member(self) -> Member:
        self.created += 1
        consumer = self.bus.consumer(GROUP, [TOPIC])
        self.resources.callback(consumer.close)
        return Member(f"c{self.created}", consumer)

    def _poll(self, member: Member, max_records: int, max_wait_s: float) -> None:
        batch = member.consumer.poll_batch(max_records, max_wait_s)
        for message in batch:
            done = self.covered.get(message.partition, 0)
            assert message.offset >= done, (
                f"{member.name} got {message.value!r} at {TOPIC}[{message.partition}] "
                f"offset {message.offset} although a commit covered it (up to {done}); "
                f"delivered before to {self._holders(message)}"
            )
            self.deliveries.append(Delivery(member.name, message))
        member.held.extend(batch)

    def _holders(self, message: Message) -> list[str]:
        return [d.member for d in self.deliveries if d.message.value == message.value]

    def _process_and_commit(self, member: Member) -> None:
        batch, member.held = member.held, []
        if not batch:
            return
        for message in batch:
            self.sink.write(message)
        self.stale_offered += sum(m.offset < self.covered.get(m.partition, 0) for m in batch)
        refused: set[int] = set()
        try:
            member.consumer.commit(batch)
        except FencedError as exc:
            refused = refused_partitions(exc)
            assert refused, f"a refused commit names no partition: {exc}"
        for message in batch:
            if message.partition not in refused:
                done = self.covered.get(message.partition, 0)
                self.covered[message.partition] = max(done, message.offset + 1)

    def _drain(self) -> None:
        """Process everything left with the live members (a new one if none is left)."""
        if not self.live:
            self.live.append(self._new_member())
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        while not self._all_committed() and time.monotonic() < deadline:
            for member in self.live:
                self._poll(member, 100, 0.01)
                self._process_and_commit(member)
                self.committed_offsets_are_those_of_successful_commits()

    def _all_committed(self) -> bool:
        return all((p.committed or 0) == p.high for p in self.bus.partitions(TOPIC, GROUP))

    def _check_everything_done_once(self) -> None:
        ends = {p.partition: (p.committed or 0, p.high) for p in self.bus.partitions(TOPIC, GROUP)}
        assert all(committed == high for committed, high in ends.values()), ends
        assert {d.message.value for d in self.deliveries} == self.produced
        assert set(self.sink.results) == self.produced
        assert all(self.sink.new_writes[i] == 1 for i in self.produced), self.sink.new_writes


# Not shrunk: with random member ids a failing run seldom replays the same way, and each
# replay may wait out its drain; the failing run's own steps and error are reported.
BusMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=50,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
)
TestBusProperties = BusMachine.TestCase


# Regressions. The machine found a member that polls, loses a partition to a member that
# commits further and leaves, gets the partition back and commits its batch from before:
# the offset moved back, so committed messages were delivered again. The same stale batch
# can also reach past what the member has read since it got the partition back.


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    opened = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    try:
        yield opened
    finally:
        opened.close()


def committed(bus: Bus) -> dict[int, int | None]:
    return {p.partition: p.committed for p in bus.partitions("t", "g")}


def test_a_batch_from_before_a_rebalance_never_moves_an_offset_back(bus: Bus) -> None:
    bus.create_topic("t", partitions=2)
    bus.produce("t", [Record(None, b"m%d" % i) for i in range(10)])  # 5 per partition
    first = bus.consumer("g", ["t"])
    held = first.poll_batch(4, 1.0)  # offsets 0 and 1 of each partition
    second = bus.consumer("g", ["t"])
    (moved,) = second.assignment()
    taken = second.poll_batch(100, 1.0)
    assert [(m.partition, m.offset) for m in taken] == [(moved.partition, i) for i in range(5)]
    second.commit(taken)
    second.close()  # the moved partition goes back to the first member
    held += first.poll_batch(100, 0.0)  # sees it back, and the rest of its other one
    first.commit(held)
    first.close()
    assert committed(bus) == {0: 5, 1: 5}
    third = bus.consumer("g", ["t"])
    assert third.assignment() == [TopicPartition("t", 0), TopicPartition("t", 1)]
    assert third.poll_batch(100, 0.2) == []  # nothing committed comes back
    third.close()


def test_a_batch_from_before_a_rebalance_is_not_handed_out_again(bus: Bus) -> None:
    bus.create_topic("t", partitions=2)
    bus.produce("t", [Record(None, b"m%d" % i) for i in range(20)])  # 10 per partition
    first = bus.consumer("g", ["t"])
    held = first.poll_batch(8, 1.0)  # offsets 0-3 of each partition
    second = bus.consumer("g", ["t"])
    (moved,) = second.assignment()
    second.commit(second.poll_batch(1, 1.0))  # offset 0 of the moved partition
    second.close()
    held += first.poll_batch(2, 0.0)  # offset 1 of the moved partition, 4 of the other
    first.commit(held)  # reaches offset 3 of the moved partition, past what it read since
    assert committed(bus) == {moved.partition: 4, 1 - moved.partition: 5}
    rest = first.poll_batch(100, 0.0)
    first.close()
    assert sorted((m.partition, m.offset) for m in rest if m.partition == moved.partition) == [
        (moved.partition, offset) for offset in range(4, 10)
    ]
