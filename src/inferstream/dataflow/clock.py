"""Event-time watermarks of a task: how far each input has got, and when to stop waiting.

A window or join decides by *event time* (``created_at_us``), not by when messages
happen to arrive, so a backlog drained after an outage, or a replay of the log, gives
the same windows and joins as the live run. The watermark is the task's promise that
no more events older than it are expected; what arrives behind it anyway is late.

Each input topic has its own mark, the larger of:

- the latest event time seen on it minus ``lateness_us`` (events may arrive up to
  that much out of order and still count), and
- its *idle mark* ``now_us - lateness_us``, set when the worker reports the topic
  caught up and quiet.

The task's watermark is the **minimum** over all its input topics. A join waits for
several branches, each on its own topic; if one branch is slow, taking the maximum
would let the fast branch's watermark declare the slow branch's results late before
they were even computed. With the minimum, a slow input holds the whole task back
instead, which only delays outputs.

A topic never seen and never idle gives :data:`NO_WATERMARK`, so the task waits for
it. A task that has heard no event at all takes no idle marks: it has nothing to close
or expire, and a mark taken from the clock before the first event would make that
event late whenever the stages before it (perhaps another pipeline's, in another
process) took longer than the lateness to start; its first events set its clock.
Idleness is applied only when the worker *knows* the topic has no lag (it read
up to the end of the partition): while a backlog or a replay is drained the marks
move only with the events in it, so wall-clock time cannot close windows that the
backlog still has members for, and the results equal those of the live run.

The clock is kept in the task's state under :data:`CLOCK_KEY`, like everything an
operator remembers, and so is an operator's :class:`Schedule`: what falls due (a
window's end, a join's timeout) when the watermark passes which time.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Iterator, Sequence
from typing import Any

from inferstream.dataflow.task import TaskState
from inferstream.errors import ConfigError

#: The watermark of a task that has not heard from one of its inputs yet.
NO_WATERMARK = -(2**63)
#: Reserved task-state key holding the clock.
CLOCK_KEY = "__clock__"


class Clock:
    """Watermarks of one task over the stage's input ``topics``."""

    def __init__(self, topics: Sequence[str], lateness_us: int) -> None:
        if not topics:
            raise ConfigError("a clock needs at least one input topic")
        if lateness_us < 0:
            raise ConfigError(f"lateness must be >= 0, got {lateness_us} us")
        self.topics = tuple(topics)
        self.lateness_us = lateness_us

    def observe(self, task: TaskState, topic: str, event_us: int) -> tuple[int, int]:
        """An event with time ``event_us`` was read from ``topic``.

        Returns the task's watermark before the event and after it: an operator needs
        both (what is late, then what falls due), and reads the clock once for them.
        """
        state = self._state(task, topic)
        before = self._watermark(state)
        latest = state["max"].get(topic)
        if latest is not None and event_us <= latest:
            return before, before
        state["max"][topic] = event_us
        task.put(CLOCK_KEY, state)
        return before, self._watermark(state)

    def idle(self, task: TaskState, topic: str, now_us: int) -> int:
        """``topic`` is caught up and quiet: let its mark follow ``now_us`` (never back).

        Returns the task's watermark after it. A task that has heard no event yet has
        nothing to close and takes no mark (see the module's text).
        """
        state = self._state(task, topic)
        if not state["max"]:
            return self._watermark(state)
        mark = now_us - self.lateness_us
        previous = state["idle"].get(topic)
        if previous is None or mark > previous:
            state["idle"][topic] = mark
            task.put(CLOCK_KEY, state)
        return self._watermark(state)

    def topic_watermark(self, task: TaskState, topic: str) -> int:
        state = task.get(CLOCK_KEY) or {"max": {}, "idle": {}}
        return self._topic_mark(state, topic)

    def watermark(self, task: TaskState) -> int:
        """The task's watermark: the minimum of its input topics' marks."""
        return self._watermark(task.get(CLOCK_KEY) or {"max": {}, "idle": {}})

    def _watermark(self, state: dict[str, Any]) -> int:
        if len(self.topics) == 1:
            return self._topic_mark(state, self.topics[0])
        return min([self._topic_mark(state, topic) for topic in self.topics])

    def _topic_mark(self, state: dict[str, Any], topic: str) -> int:
        latest = state["max"].get(topic)
        mark = NO_WATERMARK if latest is None else latest - self.lateness_us
        idle = state["idle"].get(topic)
        return mark if idle is None or idle < mark else idle

    def _state(self, task: TaskState, topic: str) -> dict[str, Any]:
        if topic not in self.topics:
            raise ConfigError(
                f"topic {topic!r} is not an input of this operator (its inputs are "
                f"{', '.join(self.topics)}); give the operator every input topic of the stage"
            )
        state: dict[str, Any] = task.get(CLOCK_KEY) or {"max": {}, "idle": {}}
        return state


class Schedule:
    """When each of an operator's entries falls due (a window's end, a join's timeout),
    kept in the task state so that the next due entries are found without a scan.

    Entries are grouped in buckets of ``width_us`` by due time, one state value per
    bucket (``<name>/<bucket>``: entry -> due time, in order of due time). An index of
    the buckets in order, with a lower bound of each one's earliest due time, is kept
    in the task's memo (it is rebuilt from the buckets when a task is loaded, so a
    commit never rewrites it). A message that makes nothing due costs one comparison;
    one that does takes the due entries off the front of the first bucket, so a bucket
    that falls due bit by bit costs what falls due, not its size; a commit rewrites
    only the buckets that changed. (A scan of the task's open entries whenever
    something fell due ran joins and sessions over a thousand keys at 2,600-2,900
    messages/s, since joins complete before their timeout and keep the next due time
    stale; with the schedule, 40,000.)
    """

    def __init__(self, name: str, width_us: int) -> None:
        self.name = name
        self.width_us = max(1, width_us)

    def add(self, task: TaskState, entry: str, due_us: int) -> None:
        """Schedule ``entry`` (to move one, remove it first: buckets are not searched)."""
        index = self._index(task)  # before the buckets change, when it is built from them
        bucket = due_us // self.width_us
        name = self._bucket_key(bucket)
        items: dict[str, int] | None = task.get(name)
        if items is not None:
            items.pop(entry, None)
        if not items:
            task.put(name, {entry: due_us})
        elif due_us >= next(reversed(items.values())):
            items[entry] = due_us  # the usual case: event time moves forward
            task.put(name, items)
        else:
            items[entry] = due_us
            task.put(name, dict(sorted(items.items(), key=_due_time)))
        if index and index[-1][0] < bucket:
            index.append([bucket, due_us])  # the usual case again
            return
        at = bisect.bisect_left(index, bucket, key=_bucket)
        if at < len(index) and index[at][0] == bucket:
            index[at][1] = min(index[at][1], due_us)
        else:
            index.insert(at, [bucket, due_us])

    def remove(self, task: TaskState, entry: str, due_us: int) -> None:
        """Forget ``entry``, added with ``due_us``; its bucket's bound may stay lower."""
        index = self._index(task)
        bucket = due_us // self.width_us
        name = self._bucket_key(bucket)
        items = task.get(name) or {}
        if items.pop(entry, None) is None:
            return
        if items:
            task.put(name, items)
            return
        task.delete(name)
        index.pop(bisect.bisect_left(index, bucket, key=_bucket))

    def pop_due(self, task: TaskState, watermark: int) -> list[tuple[int, str]]:
        """Remove and return the entries due at ``watermark``, as (due, entry) in order."""
        index = self._index(task)
        if not index or index[0][1] > watermark:
            return []  # what most messages find
        due: list[tuple[int, str]] = []
        while index and index[0][1] <= watermark:
            name = self._bucket_key(index[0][0])
            items: dict[str, int] = task.get(name)
            taken = list(itertools.takewhile(lambda item: item[1] <= watermark, items.items()))
            due += [(d, entry) for entry, d in taken]
            if len(taken) < len(items):  # later buckets hold only later times
                for entry, _ in taken:
                    del items[entry]
                if taken:
                    task.put(name, items)
                index[0][1] = next(iter(items.values()))
                break
            task.delete(name)
            index.pop(0)
        return sorted(due)

    def entries(self, task: TaskState) -> Iterator[tuple[int, str]]:
        """Every scheduled (due, entry), bucket by bucket: to rebuild an index of them."""
        for bucket, _bound in self._index(task):
            items: dict[str, int] = task.get(self._bucket_key(bucket))
            yield from ((d, entry) for entry, d in items.items())

    def _index(self, task: TaskState) -> list[list[int]]:
        """[bucket, lower bound of its earliest due time], in bucket order."""
        index: list[list[int]] | None = task.memo.get(self.name)
        if index is None:  # the task was loaded: its buckets are in order of due time
            prefix = self._bucket_key("")
            buckets = sorted(int(key[len(prefix) :]) for key in task.keys(prefix))
            index = [[b, next(iter(task.get(self._bucket_key(b)).values()))] for b in buckets]
            task.memo[self.name] = index
        return index

    def _bucket_key(self, bucket: int | str) -> str:
        return f"{self.name}/{bucket}"


_bucket = operator.itemgetter(0)  # of an index row [bucket, bound]
_due_time = operator.itemgetter(1)  # of a bucket's item (entry, due)
