"""A stage worker: the micro-batch loop at the heart of every pipeline.

Each turn of the loop consumes a micro-batch, runs the stage's steps fused on the
whole batch, produces the outputs (and dead letters), and only then commits the
input offsets. A crash anywhere before the commit redelivers the batch; outputs get
deterministic ids (input id + stage + index) so downstream sinks upsert and a
redelivery never doubles a result.

Failure handling, per message:

- :class:`~inferstream.errors.InvalidInput` — unusable input: dead-lettered at once.
- any other exception — retried with exponential backoff; after ``max_attempts``
  the message goes to ``<input>.dlq`` with the error and the partition moves on.
- :class:`~inferstream.errors.TransientError` raised for a whole batch (bus or
  store down) — the batch is retried without limit and nothing is committed.

Only one batch is in flight per worker, so memory stays flat under any backlog.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

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
from inferstream.metrics import StageMetrics
from inferstream.steps import Outcome, Step

log = logging.getLogger(__name__)

#: Backoff before retry ``n`` (1-based) of failed messages; the last value repeats.
RETRY_BACKOFF_S = (0.05, 0.2, 0.8)
#: Backoff cap while a dependency is down (transient errors retry without limit).
MAX_TRANSIENT_BACKOFF_S = 5.0


@dataclass
class _Item:
    """One input message on its way through the steps."""

    message: Message
    envelope: Envelope | None
    input_id: str
    outputs: list[Envelope] = field(default_factory=list)
    error: BaseException | None = None
    attempts: int = 0


def _copy(env: Envelope) -> Envelope:
    clone = Envelope()
    clone.CopyFrom(env)
    return clone


def _dead_letter(item: _Item, stage: str, error: BaseException) -> Record:
    """The dead-letter record of ``item``: the original message plus the error."""
    env = item.envelope or Envelope(
        id=item.input_id,
        payload=Payload(content_type="application/octet-stream", inline=item.message.value),
    )
    letter = Envelope()
    letter.CopyFrom(env)
    letter.error.CopyFrom(
        DeadLetter(
            stage=stage,
            error_type=type(error).__name__,
            message=str(error) or repr(error),
            attempts=item.attempts,
            topic=item.message.topic,
            partition=item.message.partition,
            offset=item.message.offset,
        )
    )
    return Record(key=item.message.key, value=letter.SerializeToString())


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
        self._consumer: Consumer | None = None

    @property
    def group(self) -> str:
        return f"{self.pipeline}.{self.stage}"

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set; then finish the batch in hand and leave."""
        self._consumer = self.bus.consumer(self.group, [self.input_topic])
        try:
            while not stop.is_set():
                self.run_once()
        finally:
            self._consumer.close()
            self._consumer = None
            for step in self.steps:
                step.close()

    def run_once(self) -> int:
        """Consume, process, produce and commit one batch; return its size."""
        assert self._consumer is not None, "call run(), which joins the group first"
        messages = self._consumer.poll_batch(self.max_batch, self.max_wait_s)
        if not messages:
            return 0
        started = time.monotonic()
        outputs, dead = self._process_until_done(messages)
        self._publish(outputs, dead)
        try:
            self._consumer.commit(messages)
        except FencedError:
            # Another member owns these partitions now and will redeliver; our
            # outputs have deterministic ids, so the redelivery cannot double them.
            log.warning(
                "stage %s lost its partitions mid-batch; the new owner redoes it", self.stage
            )
        self.metrics.messages_in.inc(len(messages))
        self.metrics.batch_size.observe(len(messages))
        self.metrics.processing.observe(time.monotonic() - started)
        return len(messages)

    def _publish(self, outputs: list[Record], dead: list[Record]) -> None:
        """Produce outputs and dead letters, retrying while the bus is unavailable."""
        delay = RETRY_BACKOFF_S[0]
        while True:
            try:
                if outputs and self.output_topic:
                    self.bus.produce(self.output_topic, outputs)
                if dead:
                    self.bus.produce(self.dlq_topic, dead)
                return
            except TransientError as exc:
                log.warning(
                    "stage %s cannot produce (%s); retrying in %.2fs", self.stage, exc, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, MAX_TRANSIENT_BACKOFF_S)

    def _process_until_done(self, messages: Sequence[Message]) -> tuple[list[Record], list[Record]]:
        items = [self._parse(m) for m in messages]
        pending = [i for i in items if i.error is None]
        dead = [_dead_letter(i, self.stage, i.error) for i in items if i.error is not None]
        delay = RETRY_BACKOFF_S[0]
        while pending:
            try:
                self._attempt(pending)
            except TransientError as exc:
                # A dependency is down: nothing is committed, so keep trying (a drain
                # request cannot skip this batch without losing it).
                log.warning("stage %s: %s; retrying the batch in %.2fs", self.stage, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_TRANSIENT_BACKOFF_S)
                continue
            pending = self._sort_failures(pending, dead)
            if pending:
                self.metrics.failed.inc(len(pending))
                time.sleep(RETRY_BACKOFF_S[min(pending[0].attempts, len(RETRY_BACKOFF_S)) - 1])
        self.metrics.dead_letters.inc(len(dead))
        for item in items:
            self._finish_outputs(item)
        outputs = [self._output_record(out) for item in items for out in item.outputs]
        self.metrics.messages_out.inc(len(outputs))
        return outputs, dead

    def _sort_failures(self, pending: list[_Item], dead: list[Record]) -> list[_Item]:
        """Dead-letter hopeless failures; return the items to try again."""
        retry = []
        for item in pending:
            if item.error is None:
                continue
            if isinstance(item.error, InvalidInput) or item.attempts >= self.max_attempts:
                log.info("stage %s dead-letters %s: %s", self.stage, item.input_id, item.error)
                dead.append(_dead_letter(item, self.stage, item.error))
            else:
                retry.append(item)
        return retry

    def _parse(self, message: Message) -> _Item:
        fallback_id = f"{message.topic}:{message.partition}:{message.offset}"
        try:
            env = parse(message.value)
        except InvalidInput as exc:
            return _Item(message, None, fallback_id, error=exc, attempts=1)
        return _Item(message, env, env.id)

    def _attempt(self, items: list[_Item]) -> None:
        """Run every step on ``items`` (fused: no topic in between), filling outputs or error."""
        flows: list[tuple[_Item, Envelope]] = []
        for item in items:
            item.attempts += 1
            item.error = None
            item.outputs = []
            assert item.envelope is not None
            flows.append((item, _copy(item.envelope)))  # a retry starts from the original
        for step in self.steps:
            outcomes = self._run_step(step, [env for _, env in flows])
            flows = self._advance(flows, outcomes)
        for item, env in flows:
            if item.error is None:
                item.outputs.append(env)

    def _run_step(self, step: Step, batch: list[Envelope]) -> list[Outcome]:
        """The step's outcomes; isolates messages one by one if the step fails as a whole."""
        if not batch:
            return []
        try:
            outcomes = step.process(batch)
        except TransientError:
            raise
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            log.debug(
                "step %s failed on a batch (%s); retrying one message at a time", step.name, exc
            )
            return [self._run_step(step, [env])[0] for env in batch]
        if len(outcomes) != len(batch):
            raise RuntimeError(
                f"step {step.name!r} of stage {self.stage!r} returned {len(outcomes)} outcomes "
                f"for {len(batch)} messages; a step must return one outcome per input"
            )
        return outcomes

    @staticmethod
    def _advance(
        flows: list[tuple[_Item, Envelope]], outcomes: list[Outcome]
    ) -> list[tuple[_Item, Envelope]]:
        nxt: list[tuple[_Item, Envelope]] = []
        for (item, _), outcome in zip(flows, outcomes, strict=True):
            if item.error is not None:
                continue
            if isinstance(outcome, BaseException):
                item.error = outcome
            elif isinstance(outcome, Envelope):
                nxt.append((item, outcome))
            elif len(outcome) == 1:
                nxt.append((item, outcome[0]))
            else:
                # Fan-out: copies, so outputs that are one object still get their own ids.
                nxt.extend((item, _copy(env)) for env in outcome)
        return [(item, env) for item, env in nxt if item.error is None]

    def _output_record(self, env: Envelope) -> Record:
        return Record(key=env.partition_key.encode() or None, value=env.SerializeToString())

    def _finish_outputs(self, item: _Item) -> None:
        """Give ``item``'s outputs deterministic ids and a lineage entry."""
        stamp = now_us()
        for index, env in enumerate(item.outputs):
            env.id = derive_id(item.input_id, self.stage, index)
            env.lineage.append(LineageStep(stage=self.stage, at_us=stamp, worker=self.worker_id))
        if item.envelope is not None and item.envelope.created_at_us:
            self.metrics.age.observe(max(stamp - item.envelope.created_at_us, 0) / 1e6)
