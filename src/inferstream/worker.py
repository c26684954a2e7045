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
from collections.abc import Callable, Sequence
from typing import TypeVar

from inferstream.bus import Bus, Consumer, Message, Record
from inferstream.envelope import (
    DeadLetter,
    Envelope,
    LineageStep,
    Payload,
    derive_id,
    now_us,
    parse,
)
from inferstream.errors import FencedError, InvalidInput, TransientError
from inferstream.fused import Item, run_fused
from inferstream.metrics import StageMetrics
from inferstream.steps import Step

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


class StageWorker:
    """Runs one stage of a pipeline against a bus; one instance per process or thread."""

    def __init__(
        self,
        bus: Bus,
        *,
        pipeline: str,
        stage: str,
        input_topic: str,
        output_topic: str | None,
        steps: Sequence[Step],
        max_batch: int = 64,
        max_wait_s: float = 0.01,
        max_attempts: int = 3,
        worker_id: str = "",
    ) -> None:
        self.bus = bus
        self.pipeline = pipeline
        self.stage = stage
        self.input_topic = input_topic
        self.output_topic = output_topic
        self.dlq_topic = f"{input_topic}.dlq"
        self.steps = list(steps)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_attempts = max_attempts
        self.worker_id = worker_id or stage
        self.metrics = StageMetrics.for_stage(pipeline, stage)
        self._stop = threading.Event()
        self._poll_wait_s = max_wait_s

    @property
    def group(self) -> str:
        return f"{self.pipeline}.{self.stage}"

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set; then finish the batch in hand and leave."""
        self._stop = stop
        try:
            consumer = self.bus.consumer(self.group, [self.input_topic])
            try:
                while not stop.is_set():
                    self.run_once(consumer)
            finally:
                consumer.close()
        finally:
            for step in self.steps:
                step.close()

    def run_once(self, consumer: Consumer) -> int:
        """Consume, process, produce and commit one batch; return its size."""
        try:
            messages = self._retry(lambda: consumer.poll_batch(self.max_batch, self._poll_wait_s))
            # Both buses return as soon as a message arrives, so an idle worker can wait
            # long between polls (cheap when nothing comes) at no cost in latency.
            self._poll_wait_s = self.max_wait_s if messages else IDLE_POLL_S
            if not messages:
                return 0
            started = time.monotonic()
            outputs, dead = self._process(messages)
            self._retry(lambda: self._publish(outputs, dead))
            self._retry(lambda: consumer.commit(messages))
        except FencedError:
            # Another member owns these partitions now and redoes the batch; our outputs
            # have deterministic ids, so the redelivery cannot double them.
            log.warning(
                "stage %s lost its partitions mid-batch; their new owner redoes it", self.stage
            )
            return 0
        except _Abandoned:
            log.warning(
                "stage %s stops with its batch uncommitted; it will be redelivered", self.stage
            )
            return 0
        self.metrics.messages_in.inc(len(messages))
        self.metrics.batch_size.observe(len(messages))
        self.metrics.processing.observe(time.monotonic() - started)
        return len(messages)

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

    def _publish(self, outputs: list[Record], dead: list[Record]) -> None:
        if outputs and self.output_topic:
            self.bus.produce(self.output_topic, outputs)
        if dead:
            self.bus.produce(self.dlq_topic, dead)

    def _process(self, messages: Sequence[Message]) -> tuple[list[Record], list[Record]]:
        """Run the steps until every message has outputs or is dead-lettered."""
        items = [self._parse(m) for m in messages]
        pending = [i for i in items if i.error is None]
        dead = [self._dead_letter(i) for i in items if i.error is not None]
        while pending:
            self._retry(functools.partial(run_fused, self.steps, self.stage, pending))
            pending = self._sort_failures(pending, dead)
            if pending:
                self.metrics.failed.inc(len(pending))
                self._stop.wait(RETRY_BACKOFF_S[min(pending[0].attempts, len(RETRY_BACKOFF_S)) - 1])
        self.metrics.dead_letters.inc(len(dead))
        for item in items:
            self._finish_outputs(item)
        outputs = [_output_record(out) for item in items for out in item.outputs]
        self.metrics.messages_out.inc(len(outputs))
        return outputs, dead

    def _sort_failures(self, pending: list[Item], dead: list[Record]) -> list[Item]:
        """Dead-letter hopeless failures; return the items to try again."""
        retry = []
        for item in pending:
            if item.error is None:
                continue
            if isinstance(item.error, InvalidInput) or item.attempts >= self.max_attempts:
                log.info("stage %s dead-letters %s: %s", self.stage, item.input_id, item.error)
                dead.append(self._dead_letter(item))
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
        """Give ``item``'s outputs deterministic ids, their parent and a lineage entry."""
        stamp = now_us()
        for index, env in enumerate(item.outputs):
            env.id = derive_id(item.input_id, self.stage, index)
            env.parent_id = item.input_id
            env.lineage.append(LineageStep(stage=self.stage, at_us=stamp, worker=self.worker_id))
        if item.envelope is not None and item.envelope.created_at_us:
            self.metrics.age.observe(max(stamp - item.envelope.created_at_us, 0) / 1e6)


def _output_record(env: Envelope) -> Record:
    return Record(key=env.partition_key.encode() or None, value=env.SerializeToString())
