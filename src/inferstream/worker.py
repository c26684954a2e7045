"""A stage worker: the micro-batch loop at the heart of every pipeline.

Each turn of the loop consumes a micro-batch, runs the stage's steps fused on the
whole batch (:mod:`inferstream.fused`), produces the outputs (and dead letters), and
only then commits the input offsets. A crash anywhere before the commit redelivers
the batch; outputs get deterministic ids (input id + stage + index) so downstream
sinks upsert and a redelivery never doubles a result.

Failure handling, per message:

- :class:`~inferstream.errors.InvalidInput` — unusable input: dead-lettered at once.
- any other exception — retried with exponential backoff; after ``max_attempts``
  the message goes to ``<input>.dlq`` with the error and the partition moves on.
- :class:`~inferstream.errors.TransientError` (bus or store down) while polling,
  processing, producing or committing — retried with backoff, without limit and
  without counting against any message. A stop request during such an outage leaves
  the batch uncommitted (it is redelivered later) instead of waiting for the outage.

Only one batch is in flight per worker, so memory stays flat under any backlog.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from inferstream.bus import Bus, Consumer, Message, Record
from inferstream.envelope import (
    DeadLetter,
    Envelope,
    FanOut,
    LineageStep,
    Payload,
    derive_id,
    now_us,
    parse,
)
from inferstream.errors import FencedError, InvalidInput, TransientError
from inferstream.fused import Item, run_fused
from inferstream.metrics import StageMetrics
from inferstream.replays import NoReplays, ReplayWatcher
from inferstream.routing import DROP, Router
from inferstream.steps import Step
from inferstream.tracing import NO_TRACING, Tracing

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Backoff before retry ``n`` (1-based) of failed messages; the last value repeats.
RETRY_BACKOFF_S = (0.05, 0.2, 0.8)
#: Backoff cap while a dependency is down (transient errors retry without limit).
MAX_TRANSIENT_BACKOFF_S = 5.0


class _Abandoned(Exception):
    """Stop was requested while a dependency was down: leave the batch uncommitted."""


#: How long a poll waits once the input ran dry; a stop request waits at most this.
IDLE_POLL_S = 0.25

#: Records to produce, by topic.
Outbox = dict[str, list[Record]]


class StageWorker:
    """Runs one stage of a pipeline against a bus; one instance per process or thread."""

    #: Whether each batch's offsets are stored before the next batch starts. A stateless
    #: stage need not wait (Kafka: a round trip to the group's coordinator a batch): its
    #: outputs are stored first, and a commit lost in a crash only redelivers what was
    #: done, whose outputs keep their ids. The bus confirms the offsets when the worker
    #: closes or gives a partition up.
    wait_for_commits = False

    def __init__(
        self,
        bus: Bus,
        *,
        pipeline: str,
        stage: str,
        inputs: Sequence[str],
        router: Router,
        steps: Sequence[Step],
        start: Literal["earliest", "latest"] = "earliest",
        max_batch: int = 64,
        max_wait_s: float = 0.01,
        max_attempts: int = 3,
        worker_id: str = "",
        replays: ReplayWatcher | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.bus = bus
        self.pipeline = pipeline
        self.stage = stage
        self.inputs = list(inputs)
        self.router = router
        self.start: Literal["earliest", "latest"] = start
        self.steps = list(steps)
        #: The steps that want to know where each batch starts (Step.begin_batch); the
        #: positions are worked out only for them.
        self._positioned = [s for s in self.steps if type(s).begin_batch is not Step.begin_batch]
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_attempts = max_attempts
        self.worker_id = worker_id or stage
        #: Asked between batches whether an operator wants this stage replayed.
        self.replays: ReplayWatcher = replays or NoReplays()
        self.metrics = StageMetrics.for_stage(pipeline, stage)
        #: A span per message when tracing is on; with it off, calls that do nothing.
        self.spans = tracing.stage_spans(stage)
        self._stop = threading.Event()
        self._poll_wait_s = max_wait_s
        #: Set when the consumer's in-memory positions can no longer be trusted (a
        #: stateful stage found its task taken over): rejoin to read from the commits.
        self._rejoin = False
        #: (topic, partition) -> the offset of the next message expected there.
        self._next_offsets: dict[tuple[str, int], int] = {}

    @property
    def group(self) -> str:
        return f"{self.pipeline}.{self.stage}"

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set; then finish the batch in hand and leave."""
        self._stop = stop
        try:
            consumer = self.bus.consumer(self.group, self.inputs, start=self.start)
            try:
                while not stop.is_set():
                    self.run_once(consumer)
                    if self.replays.requested():
                        consumer.close()  # between batches: nothing is in flight
                        self._forget_positions()
                        log.info("stage %s paused for a replay", self.stage)
                        self.replays.wait_applied(stop)
                    elif self._rejoin:
                        consumer.close()
                        self._forget_positions()
                    else:
                        continue
                    consumer = self.bus.consumer(self.group, self.inputs, start=self.start)
            finally:
                consumer.close()
        finally:
            for step in self.steps:
                step.close()
            self.replays.close()

    def run_once(self, consumer: Consumer) -> int:
        """Consume, process, produce and commit one batch; return its size."""
        try:
            messages = self._retry(lambda: consumer.poll_batch(self.max_batch, self._poll_wait_s))
            # Both buses return as soon as a message arrives, so an idle worker can wait
            # long between polls (cheap when nothing comes) at no cost in latency.
            self._poll_wait_s = self.max_wait_s if messages else IDLE_POLL_S
            if not messages:
                # Between batches while idle too: a model that moved loads and switches
                # now, so the next message is scored by what the registry says.
                self._begin_batch(())
                self._on_empty_poll(consumer)
                return 0
            started = time.monotonic()
            self.spans.begin()
            self._begin_batch(messages)
            outputs, dead = self._process(messages)
            self._retry(lambda: self._publish(outputs, dead))
            self._retry(self._after_publish)
            self._retry(lambda: consumer.commit(messages, wait=self.wait_for_commits))
        except FencedError:
            # Another member owns these partitions now and redoes the batch; our outputs
            # have deterministic ids, so the redelivery cannot double them.
            self.spans.abandon("the stage lost its partitions; their new owner redoes it")
            log.warning(
                "stage %s lost its partitions mid-batch; their new owner redoes it", self.stage
            )
            return 0
        except _Abandoned:
            self.spans.abandon("stopped during an outage; the batch will be redelivered")
            log.warning(
                "stage %s stops with its batch uncommitted; it will be redelivered", self.stage
            )
            return 0
        self.metrics.messages_in.inc(len(messages))
        self.metrics.batch_size.observe(len(messages))
        self.metrics.processing.observe(time.monotonic() - started)
        return len(messages)

    def _begin_batch(self, messages: Sequence[Message]) -> None:
        """Tell the steps where the batch starts: the offset of its first message on
        each partition in it, and for partitions read before but absent from it, the
        offset their next message will have."""
        if not self._positioned:
            return
        positions = dict(self._next_offsets)
        batch_first: dict[tuple[str, int], int] = {}
        for message in messages:
            batch_first.setdefault((message.topic, message.partition), message.offset)
            self._next_offsets[(message.topic, message.partition)] = message.offset + 1
        positions.update(batch_first)
        for step in self._positioned:
            step.begin_batch(positions)

    def _forget_positions(self) -> None:
        """The consumer was closed: what was remembered of its partitions is stale."""
        self._rejoin = False
        self._next_offsets.clear()

    def _on_empty_poll(self, consumer: Consumer) -> None:
        """Called when a poll returned nothing (stateful stages advance idle clocks)."""

    def _after_publish(self) -> None:
        """Called once a batch's outputs are durable, before its offsets are committed."""

    def _retry(self, action: Callable[[], T]) -> T:
        """``action()``, retried with backoff while a dependency is unavailable."""
        delay = RETRY_BACKOFF_S[0]
        while True:
            try:
                return action()
            except FencedError:
                raise
            except TransientError as exc:
                if self._stop.is_set():
                    raise _Abandoned from exc
                log.warning("stage %s: %s; retrying in %.2fs", self.stage, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_TRANSIENT_BACKOFF_S)

    def _publish(self, outputs: Outbox, dead: Outbox) -> None:
        for topic, records in outputs.items():
            self.bus.produce(topic, records)
        for topic, records in dead.items():
            self.bus.produce(topic, records)
        self.spans.close()

    def _process(self, messages: Sequence[Message]) -> tuple[Outbox, Outbox]:
        """Run the steps until every message has outputs or is dead-lettered."""
        items = [self._parse(m) for m in messages]
        dead = [i for i in items if i.error is not None]
        dead += self._run_steps([i for i in items if i.error is None])
        for item in items:
            self._finish_outputs(item)
        return self._outboxes(items, dead)

    def _run_steps(self, pending: list[Item]) -> list[Item]:
        """Run the steps until every item has outputs or failed for good; return the failed."""
        dead: list[Item] = []
        while pending:
            self._retry(functools.partial(run_fused, self.steps, self.stage, pending))
            pending = self._sort_failures(pending, dead)
            if pending:
                self.metrics.failed.inc(len(pending))
                self._stop.wait(RETRY_BACKOFF_S[min(pending[0].attempts, len(RETRY_BACKOFF_S)) - 1])
        return dead

    def _outboxes(self, items: Sequence[Item], dead: Sequence[Item]) -> tuple[Outbox, Outbox]:
        """The records to produce: outputs by topic, and dead letters by topic."""
        self.spans.open(items, dead)  # before the outputs are serialized: their trace_parent
        outputs, unrouted = self._route(items)
        dead_letters: Outbox = defaultdict(list)
        for item in [*dead, *unrouted]:
            dead_letters[f"{item.message.topic}.dlq"].append(self._dead_letter(item))
        self.metrics.dead_letters.inc(len(dead) + len(unrouted))
        self.metrics.messages_out.inc(sum(map(len, outputs.values())))
        return outputs, dead_letters

    def _route(self, items: Sequence[Item]) -> tuple[Outbox, list[Item]]:
        """Each output's records by topic, and the outputs no route took (to dead-letter)."""
        outputs: Outbox = defaultdict(list)
        unrouted = []
        for item in items:
            for env in item.outputs:
                topics = self.router.topics(env)
                if not topics:
                    unrouted.append(_unrouted(item, env))
                    continue
                if topics == (DROP,):
                    continue
                record = _output_record(env)
                for topic in topics:
                    outputs[topic].append(record)
        return outputs, unrouted

    def _sort_failures(self, pending: list[Item], dead: list[Item]) -> list[Item]:
        """Dead-letter hopeless failures; return the items to try again."""
        retry = []
        for item in pending:
            if item.error is None:
                continue
            if isinstance(item.error, InvalidInput) or item.attempts >= self.max_attempts:
                log.info("stage %s dead-letters %s: %s", self.stage, item.input_id, item.error)
                dead.append(item)
            else:
                retry.append(item)
        return retry

    @staticmethod
    def _parse(message: Message) -> Item:
        fallback_id = f"{message.topic}:{message.partition}:{message.offset}"
        try:
            env = parse(message.value)
        except InvalidInput as exc:
            return Item(message, None, fallback_id, error=exc, attempts=1)
        return Item(message, env, env.id)

    def _dead_letter(self, item: Item) -> Record:
        """The dead-letter record of ``item``: the original message plus the error."""
        assert item.error is not None
        letter = Envelope()
        letter.CopyFrom(
            item.envelope
            or Envelope(
                id=item.input_id,
                payload=Payload(content_type="application/octet-stream", inline=item.message.value),
            )
        )
        letter.lineage.append(LineageStep(stage=self.stage, at_us=now_us(), worker=self.worker_id))
        letter.error.CopyFrom(
            DeadLetter(
                stage=self.stage,
                error_type=type(item.error).__name__,
                message=str(item.error) or repr(item.error),
                attempts=item.attempts,
                topic=item.message.topic,
                partition=item.message.partition,
                offset=item.message.offset,
            )
        )
        return Record(key=item.message.key, value=letter.SerializeToString())

    def _finish_outputs(self, item: Item) -> None:
        """Give ``item``'s outputs deterministic ids, their parent and a lineage entry;
        the children of a fan-out also their place among their siblings."""
        stamp = now_us()
        count = len(item.outputs)
        for index, env in enumerate(item.outputs):
            env.id = derive_id(item.input_id, self.stage, index)
            env.parent_id = item.input_id
            env.lineage.append(LineageStep(stage=self.stage, at_us=stamp, worker=self.worker_id))
            if item.fanned_out:
                env.fanout.append(
                    FanOut(parent_id=item.input_id, index=index, count=count, stage=self.stage)
                )
        if item.envelope is not None and item.envelope.created_at_us:
            self.metrics.age.observe(max(stamp - item.envelope.created_at_us, 0) / 1e6)


class Unrouted(Exception):
    """An output that no route of the stage takes, and the stage has no ``otherwise``."""


def _unrouted(item: Item, env: Envelope) -> Item:
    """A dead-letter item for output ``env`` of ``item`` that no route took."""
    reason = Unrouted(
        f"output {env.id} matches no route of the stage and the stage has no 'otherwise'; "
        "add one (a topic, or 'drop' to discard such outputs)"
    )
    return Item(item.message, env, env.id, error=reason, attempts=item.attempts)


def _output_record(env: Envelope) -> Record:
    return Record(key=env.partition_key.encode() or None, value=env.SerializeToString())
