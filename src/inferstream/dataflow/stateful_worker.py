"""The micro-batch loop of a stateful stage: an operator, durable state, then the steps.

Each batch goes, message by message in partition order, through the stage's operator
(a join, a window, or a step with keyed state); the operator's outputs then run
through the stage's ordinary steps, fused, as in :class:`~inferstream.worker.StageWorker`.
The order of a batch's effects is what keeps state consistent with offsets:

1. apply each message to its task's state (in memory), unless the task's stored
   offsets say it was applied already: a redelivered message never counts twice;
2. produce the outputs, late events (``<input>.late``) and dead letters;
3. commit each touched task's state and offsets in one database transaction, checked
   against the version it was loaded at (a stale owner is refused: fencing);
4. commit the input offsets on the bus.

A crash after 2 redoes the batch from the old state and produces the same outputs
with the same ids (downstream upserts and joins and windows drop duplicate ids); a
crash after 3 skips the applied messages. The same holds on both buses, since the
state lives in the results store's database and not in the bus (docs/dataflow.md).

Idleness: when a poll brings nothing, an input partition that has no lag and sent
nothing for ``idle_s`` lets its watermark follow the clock, so the last window closes
and joins time out on a quiet stream, while a backlog drain or a replay, which always
has lag, closes them by event time only, with the same results as in real time.
Nothing is idle either while a stage ``upstream`` of this one in the pipeline has lag
(a burst still on its way through the stages before): its events would come late.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from inferstream.bus import Bus, Consumer, Message
from inferstream.dataflow.operator import Emit, Operator
from inferstream.dataflow.state_store import StateStore
from inferstream.dataflow.task import TaskState
from inferstream.envelope import Envelope, LineageStep, now_us
from inferstream.errors import FencedError
from inferstream.fused import Item
from inferstream.metrics import OperatorMetrics
from inferstream.worker import Outbox, StageWorker

log = logging.getLogger(__name__)

#: How often the state-size and open-entries gauges are refreshed.
GAUGE_INTERVAL_S = 10.0


class LateEvent(Exception):
    """An event arrived after the window or join it belongs to was emitted."""


class OperatorRefused(Exception):
    """The operator could not use a message, or a join ended incomplete in inner mode."""


class StatefulWorker(StageWorker):
    """Runs a stage whose work needs state: one instance per process or thread."""

    #: Idleness reads the lag of this stage's group (here and in the stages after it),
    #: which follows the committed offsets: they are stored before the next batch.
    wait_for_commits = True

    def __init__(
        self,
        bus: Bus,
        *,
        operator: Operator,
        state: StateStore,
        idle_s: float,
        upstream: Sequence[tuple[str, str]] = (),
        **settings: Any,
    ) -> None:
        super().__init__(bus, **settings)
        self.operator = operator
        self.state = state
        self.idle_s = idle_s
        #: (topic, group) of the stages before this one (PipelineSpec.upstream).
        self.upstream = tuple(upstream)
        self.operator_metrics = OperatorMetrics.for_stage(self.pipeline, self.stage)
        self._tasks: dict[int, TaskState] = {}
        self._touched: set[int] = set()
        self._owned: set[int] = set()
        self._last_seen: dict[tuple[str, int], float] = {}
        self._next_idle_check = 0.0
        self._next_gauges = 0.0

    def run_once(self, consumer: Consumer) -> int:
        self._sync_assignment(consumer)
        handled = super().run_once(consumer)
        if self._touched:
            # The batch ended without its state committed (fenced, or stopping during
            # an outage): forget the in-memory state and re-read positions from commits.
            self._rejoin = True
        self._refresh_gauges()
        return handled

    def _forget_positions(self) -> None:
        """The consumer was closed (a rejoin or a replay): every task is read again from
        the store, which a replay may have reset."""
        super()._forget_positions()
        self._tasks.clear()
        self._touched.clear()
        self._owned.clear()
        self._last_seen.clear()

    def _sync_assignment(self, consumer: Consumer) -> None:
        """Drop cached tasks this member lost or just gained (another owner may have
        moved them on meanwhile): they are read again from the store when needed."""
        owned = {tp.partition for tp in consumer.assignment()}
        for partition in (owned ^ self._owned) & set(self._tasks):
            del self._tasks[partition]
        self._owned = owned

    def _task(self, partition: int) -> TaskState:
        task = self._tasks.get(partition)
        if task is None:
            task = self._retry(lambda: self.state.load(self.group, partition))
            self._tasks[partition] = task
        return task

    def run(self, stop: threading.Event) -> None:
        try:
            super().run(stop)
        finally:
            self.state.close()

    def _process(self, messages: Sequence[Message]) -> tuple[Outbox, Outbox]:
        emitted: list[tuple[Message, Emit]] = []
        unreadable: list[Item] = []
        seen = time.monotonic()
        for message in messages:
            self._last_seen[(message.topic, message.partition)] = seen
            task = self._task(message.partition)
            if task.applied(message.topic, message.offset):
                self.operator_metrics.skipped.inc()
                continue
            item = self._parse(message)
            if item.envelope is None:
                unreadable.append(item)
            else:
                emitted += [(message, emit) for emit in self._apply(task, message, item.envelope)]
            task.advance(message.topic, message.offset)
            self._touched.add(message.partition)
        return self._emit(emitted, unreadable)

    def _apply(self, task: TaskState, message: Message, env: Envelope) -> list[Emit]:
        try:
            return self.operator.on_message(task, message.topic, env)
        except Exception as exc:  # a keyed step failed on this message: it alone is refused
            log.warning("stage %s: operator failed on %s: %s", self.stage, env.id, exc)
            return [Emit("dead", env, f"{type(exc).__name__}: {exc}")]

    def _emit(
        self, emitted: Sequence[tuple[Message, Emit]], unreadable: Sequence[Item] = ()
    ) -> tuple[Outbox, Outbox]:
        """Turn the operator's emits into records: outputs through the steps, late events
        to ``<input>.late``, refusals to ``<input>.dlq``."""
        items: list[Item] = []
        dead: list[Item] = list(unreadable)
        late: Outbox = defaultdict(list)
        for message, emit in emitted:
            env = emit.envelope
            if emit.kind == "out":
                items.append(Item(message, env, env.id))
            elif emit.kind == "late":
                item = Item(message, env, env.id, error=LateEvent(emit.reason), attempts=1)
                late[f"{emit.topic or message.topic}.late"].append(self._dead_letter(item))
            else:
                refusal = OperatorRefused(emit.reason)
                dead.append(Item(message, env, env.id, error=refusal, attempts=1))
        dead += self._run_steps(items) if self.steps else _as_outputs(items)
        for item in items:
            self._finish_operator_outputs(item)
        outputs, dead_letters = self._outboxes(items, dead)
        self._count_joins(items)
        for topic, records in late.items():
            dead_letters.setdefault(topic, []).extend(records)
            self.operator_metrics.late.inc(len(records))
        return outputs, dead_letters

    def _finish_operator_outputs(self, item: Item) -> None:
        """An operator output keeps its deterministic id and parent through the steps,
        unless a step splits it (then its children get ids and frames as usual)."""
        if item.fanned_out or len(item.outputs) != 1:
            self._finish_outputs(item)
            return
        assert item.envelope is not None
        (env,) = item.outputs
        env.id, env.parent_id = item.envelope.id, item.envelope.parent_id
        env.lineage.append(LineageStep(stage=self.stage, at_us=now_us(), worker=self.worker_id))

    def _after_publish(self) -> None:
        for partition in sorted(self._touched):
            try:
                self.state.commit(self._tasks[partition])
            except FencedError:
                log.warning(
                    "stage %s: task %d moved to another worker; it redoes the batch",
                    self.stage,
                    partition,
                )
                raise
            self._touched.discard(partition)

    def _on_empty_poll(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now < self._next_idle_check:
            return
        self._next_idle_check = now + min(self.idle_s / 2, 1.0)
        emitted: list[tuple[Message, Emit]] = []
        quiet = [
            tp
            for tp in consumer.assignment()
            if now - self._last_seen.setdefault((tp.topic, tp.partition), now) >= self.idle_s
        ]
        if not quiet or self._upstream_busy():
            return
        lags = self._lags({tp.topic for tp in quiet})
        for tp in quiet:
            if lags.get((tp.topic, tp.partition), 1) > 0:
                continue
            task = self._task(tp.partition)
            emits = self.operator.on_idle(task, tp.topic, now_us())
            if emits:
                self._touched.add(tp.partition)
                marker = Message(tp.topic, tp.partition, -1, None, b"", int(time.time() * 1000))
                emitted += [(marker, emit) for emit in emits]
        if emitted:
            outputs, dead = self._emit(emitted)
            self._retry(lambda: self._publish(outputs, dead))
            self._retry(self._after_publish)

    def _upstream_busy(self) -> bool:
        """Whether a stage before this one still has messages to read (or is midway
        through a batch: its offsets are committed after its outputs are written)."""
        for topic, group in self.upstream:
            parts = self._retry(functools.partial(self.bus.partitions, topic, group))
            if any(p.lag > 0 for p in parts):
                return True
        return False

    def _lags(self, topics: set[str]) -> dict[tuple[str, int], int]:
        """The group's lag on each partition of ``topics`` (one question per topic)."""
        lags = {}
        for topic in sorted(topics):
            parts = self._retry(functools.partial(self.bus.partitions, topic, self.group))
            lags.update({(topic, p.partition): p.lag for p in parts})
        return lags

    def _refresh_gauges(self) -> None:
        now = time.monotonic()
        if now < self._next_gauges:
            return
        self._next_gauges = now + GAUGE_INTERVAL_S
        open_entries = sum(self.operator.open_count(task) for task in self._tasks.values())
        self.operator_metrics.open.set(open_entries)
        keys, size = self.state.size(self.group)
        self.operator_metrics.state_keys.set(keys)
        self.operator_metrics.state_bytes.set(size)

    def _count_joins(self, items: Sequence[Item]) -> None:
        stamp = now_us()
        for item in items:
            assert item.envelope is not None
            status = item.envelope.attributes.get("join.status", "")
            counter = self.operator_metrics.joins.get(status)
            if counter is not None:
                counter.inc()
                # A join's event time is its earliest member's: the wait since it.
                wait_us = max(stamp - item.envelope.created_at_us, 0)
                self.operator_metrics.join_wait.observe(wait_us / 1e6)


def _as_outputs(items: Sequence[Item]) -> list[Item]:
    """Without steps, each operator output is the stage's output as it is."""
    for item in items:
        assert item.envelope is not None
        item.outputs = [item.envelope]
    return []
